//! Source-address whitelists ("Remote Address"): single addresses and CIDR blocks, IPv4 and IPv6.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// One whitelist entry: a network and its prefix length. A single address is a /32 or /128.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressBlock {
    V4 { network: u32, prefix: u8 },
    V6 { network: V6Bits, prefix: u8 },
}

impl AddressBlock {
    /// Parses `a.b.c.d`, `a.b.c.d/n`, an IPv6 address or `v6/n`. Host bits set under the
    /// mask are refused, because `10.0.0.7/24` usually means the writer meant something else.
    pub fn parse(text: &str) -> Result<AddressBlock, String> {
        let (addr_text, prefix_text) = match text.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (text, None),
        };
        let addr: IpAddr = addr_text.parse().map_err(|_| {
            format!("{text:?} is not an IPv4 or IPv6 address or CIDR block (e.g. 192.0.2.10, 198.51.100.0/24, 2001:db8::/32)")
        })?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix_text {
            None => max,
            Some(p) => match p.parse::<u8>() {
                Ok(n) if n <= max && !p.starts_with('+') => n,
                _ => {
                    return Err(format!(
                        "{text:?} has an invalid prefix length: use 0 to {max}"
                    ));
                }
            },
        };
        let block = match addr {
            IpAddr::V4(a) => AddressBlock::V4 {
                network: u32::from(a),
                prefix,
            },
            // `::ffff:a.b.c.d` is how an IPv4 client looks on a dual-stack socket, and clients
            // are compared as IPv4 (`canonical`): an entry written that way is the IPv4 entry,
            // or it would pass `check` and never match.
            IpAddr::V6(a) if prefix >= 96 && a.to_ipv4_mapped().is_some() => AddressBlock::V4 {
                network: u32::from(a.to_ipv4_mapped().unwrap_or(Ipv4Addr::UNSPECIFIED)),
                prefix: prefix - 96,
            },
            IpAddr::V6(a) => AddressBlock::V6 {
                network: V6Bits::new(u128::from(a)),
                prefix,
            },
        };
        if block.masked() != block {
            return Err(format!(
                "{text:?} has bits set after the /{prefix} prefix: did you mean {}?",
                block.masked()
            ));
        }
        Ok(block)
    }

    fn masked(self) -> AddressBlock {
        match self {
            AddressBlock::V4 { network, prefix } => AddressBlock::V4 {
                network: network & mask_v4(prefix),
                prefix,
            },
            AddressBlock::V6 { network, prefix } => AddressBlock::V6 {
                network: V6Bits::new(network.get() & mask_v6(prefix)),
                prefix,
            },
        }
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self, canonical(ip)) {
            (AddressBlock::V4 { network, prefix }, IpAddr::V4(a)) => {
                u32::from(a) & mask_v4(*prefix) == *network
            }
            (AddressBlock::V6 { network, prefix }, IpAddr::V6(a)) => {
                u128::from(a) & mask_v6(*prefix) == network.get()
            }
            _ => false,
        }
    }
}

impl fmt::Display for AddressBlock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            AddressBlock::V4 {
                network,
                prefix: 32,
            } => write!(f, "{}", Ipv4Addr::from(network)),
            AddressBlock::V4 { network, prefix } => {
                write!(f, "{}/{prefix}", Ipv4Addr::from(network))
            }
            AddressBlock::V6 {
                network,
                prefix: 128,
            } => write!(f, "{}", Ipv6Addr::from(network.get())),
            AddressBlock::V6 { network, prefix } => {
                write!(f, "{}/{prefix}", Ipv6Addr::from(network.get()))
            }
        }
    }
}

/// An IPv6 network's 128 bits as four words: 4-byte aligned, so that a whitelist entry takes
/// 20 bytes instead of the 32 a `u128` (16-byte aligned) would force, which counts at a million
/// users with two entries each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct V6Bits([u32; 4]);

impl V6Bits {
    pub fn new(bits: u128) -> V6Bits {
        V6Bits([
            (bits >> 96) as u32,
            (bits >> 64) as u32,
            (bits >> 32) as u32,
            bits as u32,
        ])
    }

    pub fn get(self) -> u128 {
        let [a, b, c, d] = self.0.map(u128::from);
        a << 96 | b << 64 | c << 32 | d
    }
}

fn mask_v4(prefix: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0)
}

fn mask_v6(prefix: u8) -> u128 {
    u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0)
}

/// A client that reaches a dual-stack listener over IPv4 shows up as `::ffff:a.b.c.d`;
/// it is the IPv4 client `a.b.c.d` for every whitelist purpose.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    }
}

/// Where a request comes from, as far as the gateway can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAddress {
    Ip(IpAddr),
    /// A trusted proxy vouched for an `X-Forwarded-For` entry that is not an address (not
    /// UTF-8, a name, garbage). That entry is the client, and it matches no whitelist, not even
    /// `"*"`: it is never replaced by the address of a hop nearer to the gateway.
    Unreadable,
}

impl ClientAddress {
    pub fn ip(self) -> Option<IpAddr> {
        match self {
            ClientAddress::Ip(ip) => Some(ip),
            ClientAddress::Unreadable => None,
        }
    }
}

impl From<IpAddr> for ClientAddress {
    fn from(ip: IpAddr) -> ClientAddress {
        ClientAddress::Ip(ip)
    }
}

impl std::str::FromStr for ClientAddress {
    type Err = std::net::AddrParseError;

    fn from_str(text: &str) -> Result<ClientAddress, Self::Err> {
        text.parse().map(ClientAddress::Ip)
    }
}

impl fmt::Display for ClientAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientAddress::Ip(ip) => ip.fmt(f),
            ClientAddress::Unreadable => f.write_str("unreadable"),
        }
    }
}

/// The addresses one API user may call from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceWhitelist {
    /// `"*"`: the operator explicitly allowed every source.
    Any,
    /// One or two IPv4 entries, the common whitelist, kept inline: no allocation per user.
    V4(V4Pair),
    /// Any other list of entries.
    Blocks(Box<[AddressBlock]>),
}

/// One or two IPv4 blocks in 12 bytes, where a boxed slice of two `AddressBlock`s costs a
/// 48-byte allocation besides its 16-byte pointer: at a million users, 40 MB.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct V4Pair {
    networks: [u32; 2],
    prefixes: [u8; 2],
    len: u8,
}

impl V4Pair {
    /// `Some` for one or two blocks, all IPv4.
    fn of(blocks: &[AddressBlock]) -> Option<V4Pair> {
        if blocks.is_empty() || blocks.len() > 2 {
            return None;
        }
        let mut pair = V4Pair {
            networks: [0; 2],
            prefixes: [0; 2],
            len: 0,
        };
        for block in blocks {
            let AddressBlock::V4 { network, prefix } = *block else {
                return None;
            };
            pair.networks[usize::from(pair.len)] = network;
            pair.prefixes[usize::from(pair.len)] = prefix;
            pair.len += 1;
        }
        Some(pair)
    }

    fn contains(&self, a: u32) -> bool {
        let n = usize::from(self.len);
        self.networks[..n]
            .iter()
            .zip(&self.prefixes[..n])
            .any(|(&network, &prefix)| a & mask_v4(prefix) == network)
    }

    fn blocks(&self) -> impl Iterator<Item = AddressBlock> + '_ {
        let n = usize::from(self.len);
        self.networks[..n]
            .iter()
            .zip(&self.prefixes[..n])
            .map(|(&network, &prefix)| AddressBlock::V4 { network, prefix })
    }
}

impl SourceWhitelist {
    /// Parses the vendor form, entries separated by `~` with no spaces (`"192.0.2.10~2001:db8::/32"`).
    pub fn parse_tilde(text: &str) -> Result<SourceWhitelist, String> {
        if text.chars().any(char::is_whitespace) {
            return Err(format!(
                "{text:?} contains spaces: separate addresses with '~' and no spaces"
            ));
        }
        SourceWhitelist::from_entries(text.split('~'))
    }

    /// Builds a whitelist from separate entries (the TOML array form).
    pub fn from_entries<'a>(
        entries: impl IntoIterator<Item = &'a str>,
    ) -> Result<SourceWhitelist, String> {
        let entries: Vec<&str> = entries.into_iter().collect();
        if entries.is_empty() {
            return Err("the address list is empty: list the addresses this user calls from, or \"*\" to allow any source".into());
        }
        if entries.contains(&"*") {
            if entries.len() > 1 {
                return Err(
                    "\"*\" allows every source and cannot be combined with other addresses".into(),
                );
            }
            return Ok(SourceWhitelist::Any);
        }
        let mut blocks = Vec::with_capacity(entries.len());
        for entry in entries {
            let entry_trimmed = entry.trim();
            if entry_trimmed.is_empty() {
                return Err(
                    "the address list has an empty entry (two '~' in a row, or one at either end)"
                        .into(),
                );
            }
            if entry_trimmed != entry {
                return Err(format!(
                    "{entry:?} contains spaces: write addresses without spaces"
                ));
            }
            blocks.push(AddressBlock::parse(entry)?);
        }
        Ok(match V4Pair::of(&blocks) {
            Some(pair) => SourceWhitelist::V4(pair),
            None => SourceWhitelist::Blocks(blocks.into_boxed_slice()),
        })
    }

    /// The entries, in the file's order (none for `"*"`).
    pub fn blocks(&self) -> impl Iterator<Item = AddressBlock> + '_ {
        let (inline, boxed): (Option<&V4Pair>, &[AddressBlock]) = match self {
            SourceWhitelist::Any => (None, &[]),
            SourceWhitelist::V4(pair) => (Some(pair), &[]),
            SourceWhitelist::Blocks(blocks) => (None, blocks),
        };
        inline
            .into_iter()
            .flat_map(V4Pair::blocks)
            .chain(boxed.iter().copied())
    }

    /// Whether `client` may call; an unreadable client address matches nothing.
    pub fn admits(&self, client: ClientAddress) -> bool {
        client.ip().is_some_and(|ip| self.allows(ip))
    }

    pub fn allows(&self, ip: IpAddr) -> bool {
        match self {
            SourceWhitelist::Any => true,
            SourceWhitelist::V4(pair) => match canonical(ip) {
                IpAddr::V4(a) => pair.contains(u32::from(a)),
                IpAddr::V6(_) => false,
            },
            SourceWhitelist::Blocks(blocks) => {
                let ip = canonical(ip);
                blocks.iter().any(|b| b.contains(ip))
            }
        }
    }

    /// Whether an entry of the list names `ip` (`"*"` names no address: it admits all of them).
    pub fn registers(&self, ip: IpAddr) -> bool {
        !matches!(self, SourceWhitelist::Any) && self.allows(ip)
    }

    /// The entry that admits `ip`, for explanations.
    pub fn matching_entry(&self, ip: IpAddr) -> Option<String> {
        match self {
            SourceWhitelist::Any => Some("*".into()),
            _ => self
                .blocks()
                .find(|b| b.contains(canonical(ip)))
                .map(|b| b.to_string()),
        }
    }

    pub fn entries(&self) -> Vec<String> {
        match self {
            SourceWhitelist::Any => vec!["*".into()],
            _ => self.blocks().map(|b| b.to_string()).collect(),
        }
    }
}

impl fmt::Display for SourceWhitelist {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.entries().join("~"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn matches_addresses_and_blocks_of_both_families() {
        let w = SourceWhitelist::parse_tilde("192.0.2.10~198.51.100.0/24~2001:db8::/32").unwrap();
        assert!(w.allows(ip("192.0.2.10")));
        assert!(!w.allows(ip("192.0.2.11")));
        assert!(w.allows(ip("198.51.100.0")));
        assert!(w.allows(ip("198.51.100.255")));
        assert!(!w.allows(ip("198.51.101.0")));
        assert!(w.allows(ip("2001:db8:ffff::1")));
        assert!(!w.allows(ip("2001:db9::1")));
        assert_eq!(w.to_string(), "192.0.2.10~198.51.100.0/24~2001:db8::/32");
    }

    #[test]
    fn one_or_two_ipv4_entries_are_kept_inline_and_behave_like_any_list() {
        assert_eq!(std::mem::size_of::<SourceWhitelist>(), 24);
        for text in ["192.0.2.10", "192.0.2.10~10.0.0.0/8", "0.0.0.0/0"] {
            let w = SourceWhitelist::parse_tilde(text).unwrap();
            assert!(matches!(w, SourceWhitelist::V4(_)), "{text}");
            assert_eq!(w.to_string(), text);
        }
        for text in [
            "192.0.2.10~10.0.0.0/8~172.16.0.0/12",
            "2001:db8::1",
            "192.0.2.10~::1",
        ] {
            let w = SourceWhitelist::parse_tilde(text).unwrap();
            assert!(matches!(w, SourceWhitelist::Blocks(_)), "{text}");
            assert_eq!(w.to_string(), text);
        }
        let w = SourceWhitelist::parse_tilde("192.0.2.10~10.0.0.0/8").unwrap();
        for (client, allowed) in [
            ("192.0.2.10", true),
            ("192.0.2.11", false),
            ("10.255.0.1", true),
            ("11.0.0.1", false),
            ("::ffff:10.1.2.3", true),
            ("::ffff:192.0.2.11", false),
            ("2001:db8::1", false),
        ] {
            assert_eq!(w.allows(ip(client)), allowed, "{client}");
            assert_eq!(w.registers(ip(client)), allowed, "{client}");
        }
        assert_eq!(
            w.matching_entry(ip("10.9.9.9")).as_deref(),
            Some("10.0.0.0/8")
        );
        assert_eq!(w.matching_entry(ip("11.0.0.1")), None);
        assert_eq!(w.blocks().count(), 2);
        assert_eq!(SourceWhitelist::Any.blocks().count(), 0);
    }

    #[test]
    fn an_entry_is_small_and_v6_bits_round_trip() {
        assert_eq!(std::mem::size_of::<AddressBlock>(), 20);
        for bits in [
            0u128,
            1,
            u128::MAX,
            0x2001_0db8 << 96,
            0x0123_4567_89ab_cdef_fedc_ba98_7654_3210,
        ] {
            assert_eq!(V6Bits::new(bits).get(), bits);
        }
    }

    #[test]
    fn ipv4_mapped_clients_match_ipv4_entries() {
        let w = SourceWhitelist::parse_tilde("192.0.2.10~10.0.0.0/8").unwrap();
        assert!(w.allows(ip("::ffff:192.0.2.10")));
        assert!(w.allows(ip("::ffff:10.1.2.3")));
        assert!(!w.allows(ip("::ffff:192.0.2.11")));
        // The IPv4-compatible (deprecated) form is a different address and must not match.
        assert!(!w.allows(ip("::192.0.2.10")));
    }

    #[test]
    fn ipv4_mapped_entries_are_the_ipv4_entries() {
        for (written, means) in [
            ("::ffff:192.0.2.1", "192.0.2.1"),
            ("::ffff:198.51.100.0/120", "198.51.100.0/24"),
            ("::ffff:c000:201", "192.0.2.1"),
            ("::ffff:0.0.0.0/96", "0.0.0.0/0"),
        ] {
            assert_eq!(
                AddressBlock::parse(written),
                AddressBlock::parse(means),
                "{written}"
            );
        }
        let w = SourceWhitelist::parse_tilde("::ffff:192.0.2.1~::ffff:198.51.100.0/120").unwrap();
        assert!(w.allows(ip("192.0.2.1")));
        assert!(w.allows(ip("::ffff:192.0.2.1")));
        assert!(w.allows(ip("198.51.100.77")));
        assert!(!w.allows(ip("192.0.2.2")));
        assert_eq!(w.to_string(), "192.0.2.1~198.51.100.0/24");
        // Host bits under the mask are still refused, with the IPv4 form suggested.
        let err = AddressBlock::parse("::ffff:198.51.100.7/120").unwrap_err();
        assert!(err.contains("198.51.100.0/24"), "{err}");
    }

    #[test]
    fn whole_space_blocks_and_star() {
        let w = SourceWhitelist::parse_tilde("0.0.0.0/0").unwrap();
        assert!(w.allows(ip("203.0.113.9")));
        assert!(!w.allows(ip("2001:db8::1")));
        let w = SourceWhitelist::parse_tilde("::/0").unwrap();
        assert!(w.allows(ip("2001:db8::1")));
        assert!(SourceWhitelist::parse_tilde("*").unwrap().allows(ip("::1")));
        assert_eq!(
            SourceWhitelist::parse_tilde("*").unwrap(),
            SourceWhitelist::Any
        );
    }

    #[test]
    fn array_form_equals_tilde_form() {
        let a = SourceWhitelist::from_entries(["192.0.2.10", "2001:db8::/32"]).unwrap();
        let b = SourceWhitelist::parse_tilde("192.0.2.10~2001:db8::/32").unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn hostile_and_malformed_lists_are_refused() {
        for bad in [
            "",
            "~",
            "192.0.2.10~",
            "~192.0.2.10",
            "192.0.2.10~~192.0.2.11",
            "192.0.2.10 ~192.0.2.11",
            "192.0.2.10, 192.0.2.11",
            "192.0.2.256",
            "192.0.2.1/33",
            "192.0.2.1/-1",
            "192.0.2.1/+8",
            "192.0.2.1/",
            "/24",
            "2001:db8::/129",
            "198.51.100.7/24",
            "*~192.0.2.10",
            "example.org",
            "192.0.2.10\0",
            "0x7f.0.0.1",
            "127.1",
            "010.0.0.1",
        ] {
            assert!(
                SourceWhitelist::parse_tilde(bad).is_err(),
                "{bad:?} was accepted"
            );
        }
        let err = SourceWhitelist::parse_tilde("198.51.100.7/24").unwrap_err();
        assert!(err.contains("198.51.100.0/24"), "{err}");
    }
}
