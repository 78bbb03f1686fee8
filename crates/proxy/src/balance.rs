//! Which machine takes the next unit of load, as Fly picks: the least loaded
//! bucket first (below the soft limit, then between soft and hard; never at
//! the hard limit), then the closest region, then the lightest load, at
//! random among equals.

use rand::Rng;

/// How loaded a machine is relative to its limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Tier {
    BelowSoft,
    BetweenSoftAndHard,
}

#[derive(Debug, Clone, Copy)]
pub struct Candidate {
    pub load: u32,
    pub soft_limit: u32,
    pub hard_limit: Option<u32>,
    pub same_region: bool,
}

impl Candidate {
    fn tier(&self) -> Option<Tier> {
        if self.hard_limit.is_some_and(|hard| self.load >= hard) {
            None
        } else if self.load < self.soft_limit {
            Some(Tier::BelowSoft)
        } else {
            Some(Tier::BetweenSoftAndHard)
        }
    }
}

/// The index of the chosen candidate and its tier; `None` when every one is
/// at its hard limit (or there are none).
pub fn pick(candidates: &[Candidate], rng: &mut impl Rng) -> Option<(usize, Tier)> {
    let ranked = candidates
        .iter()
        .enumerate()
        .filter_map(|(i, c)| c.tier().map(|tier| (i, (tier, !c.same_region, c.load))));
    let mut best: Option<(usize, (Tier, bool, u32))> = None;
    let mut ties = 0u32;
    for (i, key) in ranked {
        match &best {
            Some((_, best_key)) if key > *best_key => {}
            Some((_, best_key)) if key == *best_key => {
                // Reservoir sampling keeps each tie equally likely.
                ties += 1;
                if rng.random_range(0..=ties) == 0 {
                    best = Some((i, key));
                }
            }
            _ => {
                best = Some((i, key));
                ties = 0;
            }
        }
    }
    best.map(|(i, (tier, _, _))| (i, tier))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(load: u32, hard: Option<u32>, same_region: bool) -> Candidate {
        Candidate {
            load,
            soft_limit: 2,
            hard_limit: hard,
            same_region,
        }
    }

    #[test]
    fn least_loaded_bucket_then_region_then_load() {
        let mut rng = rand::rng();
        assert_eq!(
            pick(&[c(1, None, true), c(0, None, true)], &mut rng),
            Some((1, Tier::BelowSoft))
        );
        // Below soft in another region beats over soft at home.
        assert_eq!(
            pick(&[c(3, None, true), c(1, None, false)], &mut rng),
            Some((1, Tier::BelowSoft))
        );
        // The same bucket: home region first, even if more loaded.
        assert_eq!(
            pick(&[c(0, None, false), c(1, None, true)], &mut rng),
            Some((1, Tier::BelowSoft))
        );
        assert_eq!(
            pick(&[c(2, Some(3), true), c(5, None, true)], &mut rng),
            Some((0, Tier::BetweenSoftAndHard))
        );
        assert_eq!(pick(&[c(3, Some(3), true)], &mut rng), None);
        assert_eq!(pick(&[], &mut rng), None);
    }

    #[test]
    fn equals_are_chosen_at_random() {
        let mut rng = rand::rng();
        let candidates = [c(0, None, true), c(0, None, true), c(0, None, true)];
        let mut seen = [0u32; 3];
        for _ in 0..600 {
            let (i, _) = pick(&candidates, &mut rng).unwrap();
            seen[i] += 1;
        }
        assert!(seen.iter().all(|&n| n > 100), "{seen:?}");
    }
}
