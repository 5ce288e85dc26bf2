//! "Did you mean …?": the closest of a set of known names to a name that matched none of them.

/// The known name closest to `word`, if it is close enough to be what was meant: an edit
/// distance of 1 for short names, up to 3 for long ones; a difference of case alone always is.
pub fn closest<'a>(word: &str, known: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let limit = match word.chars().count() {
        0..=4 => 1,
        5..=10 => 2,
        _ => 3,
    };
    let lower = word.to_lowercase();
    known
        .into_iter()
        .map(|k| {
            let d = if k.to_lowercase() == lower {
                0
            } else {
                edit_distance(&lower, &k.to_lowercase())
            };
            (d, k)
        })
        .filter(|&(d, _)| d <= limit)
        .min_by_key(|&(d, _)| d)
        .map(|(_, k)| k)
}

/// `" (did you mean \"x\"?)"` when a known name is close to `word`, or nothing.
pub fn did_you_mean<'a>(word: &str, known: impl IntoIterator<Item = &'a str>) -> String {
    closest(word, known).map_or_else(String::new, |k| format!(" (did you mean {k:?}?)"))
}

/// Levenshtein distance, counting an exchange of two neighbours as one edit (`veiw` → `view`).
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut before: Vec<usize> = (0..=b.len()).collect();
    let mut previous: Vec<usize> = before.clone();
    let mut current = vec![0; b.len() + 1];
    for i in 1..=a.len() {
        current[0] = i;
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut d = (previous[j] + 1)
                .min(current[j - 1] + 1)
                .min(previous[j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                d = d.min(before[j - 2] + 1);
            }
            current[j] = d;
        }
        std::mem::swap(&mut before, &mut previous);
        std::mem::swap(&mut previous, &mut current);
    }
    previous[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn near_misses_find_their_name_and_strangers_find_none() {
        let fields = [
            "upstream_timeout",
            "upstream_keepalive_timeout",
            "idle_timeout",
        ];
        assert_eq!(closest("upstream_timout", fields), Some("upstream_timeout"));
        assert_eq!(closest("veiw", ["view", "create"]), Some("view"));
        assert_eq!(closest("Active", ["active", "pending"]), Some("active"));
        assert_eq!(
            closest("manage-suporters", ["manage-supporters"]),
            Some("manage-supporters")
        );
        assert_eq!(closest("colour", fields), None);
        assert_eq!(closest("ab", ["xy"]), None);
        assert_eq!(
            did_you_mean("crete", ["create"]),
            " (did you mean \"create\"?)"
        );
        assert_eq!(did_you_mean("zzz", ["create"]), "");
    }

    #[test]
    fn distances() {
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("ab", "ba"), 1);
        assert_eq!(edit_distance("same", "same"), 0);
    }
}
