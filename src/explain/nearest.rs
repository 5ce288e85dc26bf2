//! Which entries of a source whitelist are nearest to a client it does not admit: what
//! `explain` suggests when a request is refused as `unregistered_source`.

use std::net::IpAddr;

use crate::auth::address::{AddressBlock, SourceWhitelist, canonical};

/// How many whitelist entries are suggested when a source matches none.
const NEAREST_ENTRIES: usize = 3;

/// The whitelist entries closest to `client`, best first, at most `NEAREST_ENTRIES`: ranked by the
/// leading bits they share with it. An entry that shares none (its first bit differs, or it is of
/// the other address family) is near nothing and is left out.
pub fn nearest_entries(whitelist: &SourceWhitelist, client: IpAddr) -> Vec<(AddressBlock, u32)> {
    let client = canonical(client);
    let mut ranked: Vec<(AddressBlock, u32)> = whitelist
        .blocks()
        .filter_map(|block| Some((block, shared_leading_bits(block, client)?)))
        .filter(|&(_, bits)| bits > 0)
        .collect();
    // Stable, so among equals the file's order is kept.
    ranked.sort_by_key(|entry| std::cmp::Reverse(entry.1));
    ranked.truncate(NEAREST_ENTRIES);
    ranked
}

/// The first `NEAREST_ENTRIES` entries of a whitelist, for a source near none of them.
pub(super) fn whitelist_entries(whitelist: &SourceWhitelist) -> String {
    let blocks: Vec<AddressBlock> = whitelist.blocks().collect();
    let mut shown: Vec<String> = blocks
        .iter()
        .take(NEAREST_ENTRIES)
        .map(ToString::to_string)
        .collect();
    if blocks.len() > NEAREST_ENTRIES {
        shown.push(format!("and {} more", blocks.len() - NEAREST_ENTRIES));
    }
    shown.join(", ")
}

fn shared_leading_bits(block: AddressBlock, client: IpAddr) -> Option<u32> {
    match (block, client) {
        (AddressBlock::V4 { network, .. }, IpAddr::V4(a)) => {
            Some((u32::from(a) ^ network).leading_zeros())
        }
        (AddressBlock::V6 { network, .. }, IpAddr::V6(a)) => {
            Some((u128::from(a) ^ network.get()).leading_zeros())
        }
        _ => None,
    }
}
