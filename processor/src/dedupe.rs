//! Dedupe by `(device, epoch, seq)`.
//!
//! # Invariant
//! Per device we keep, for the current epoch and up to [`MAX_OLD_EPOCHS`] earlier ones, the
//! highest sequence number admitted. A reading is admitted only if its seq is above that mark,
//! so no `(epoch, seq)` is ever admitted twice while its epoch is remembered.
//!
//! The gateway writes each device's batches in order to one partition, so within an epoch the
//! mark is the highest *contiguous* seq unless the device itself skipped readings (its buffer
//! dropped the oldest): such a gap is counted, and readings inside it arriving later would be
//! treated as duplicates (they cannot be told apart with a high-water mark; the protocol never
//! sends them after a later batch was acknowledged).
//!
//! A new epoch (the device's buffer was recreated) starts a fresh mark; the old mark is kept so
//! a late redelivery from the previous epoch is still recognised.

use serde::{Deserialize, Serialize};

/// Earlier epochs remembered per device.
pub const MAX_OLD_EPOCHS: usize = 3;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dedupe {
    /// `(epoch, highest admitted seq)`; `None` before the first batch.
    current: Option<(u64, u64)>,
    /// Older epochs, most recent last.
    old: Vec<(u64, u64)>,
}

/// What to do with a batch `first..=last`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Every reading was admitted before.
    Duplicate,
    /// Admit readings from index `skip` on (the first `skip` were seen already). `gap` readings
    /// were never seen between the previous mark and `first`.
    Fresh { skip: usize, gap: u64 },
}

fn admit_against(high: &mut u64, first: u64, last: u64) -> Admit {
    if last <= *high {
        return Admit::Duplicate;
    }
    let (skip, gap) = if first <= *high {
        (usize::try_from(*high + 1 - first).unwrap_or(usize::MAX), 0)
    } else {
        (0, first - *high - 1)
    };
    *high = last;
    Admit::Fresh { skip, gap }
}

impl Dedupe {
    /// Decides on a batch of `epoch` with sequence numbers `first..=last` (`first <= last`),
    /// and records it as seen.
    pub fn admit(&mut self, epoch: u64, first: u64, last: u64) -> Admit {
        match &mut self.current {
            None => {
                self.current = Some((epoch, last));
                Admit::Fresh { skip: 0, gap: 0 }
            }
            Some((e, high)) if *e == epoch => admit_against(high, first, last),
            Some(cur) => {
                if let Some((_, high)) = self.old.iter_mut().find(|(e, _)| *e == epoch) {
                    return admit_against(high, first, last);
                }
                if self.old.len() == MAX_OLD_EPOCHS {
                    self.old.remove(0);
                }
                self.old.push(*cur);
                *cur = (epoch, last);
                Admit::Fresh { skip: 0, gap: 0 }
            }
        }
    }

    /// The current epoch and its mark.
    #[must_use]
    pub fn current(&self) -> Option<(u64, u64)> {
        self.current
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use proptest::prelude::*;

    use super::*;

    #[test]
    fn redelivery_and_overlap() {
        let mut d = Dedupe::default();
        assert_eq!(d.admit(1, 1, 10), Admit::Fresh { skip: 0, gap: 0 });
        assert_eq!(d.admit(1, 1, 10), Admit::Duplicate);
        assert_eq!(d.admit(1, 5, 8), Admit::Duplicate);
        assert_eq!(d.admit(1, 8, 12), Admit::Fresh { skip: 3, gap: 0 });
        assert_eq!(d.admit(1, 15, 16), Admit::Fresh { skip: 0, gap: 2 });
        assert_eq!(d.current(), Some((1, 16)));
    }

    #[test]
    fn new_epoch_and_late_old_epoch() {
        let mut d = Dedupe::default();
        d.admit(1, 1, 10);
        assert_eq!(d.admit(2, 1, 5), Admit::Fresh { skip: 0, gap: 0 });
        // A redelivery from the old epoch is still a duplicate...
        assert_eq!(d.admit(1, 1, 10), Admit::Duplicate);
        // ...and an unseen tail of it is admitted once.
        assert_eq!(d.admit(1, 9, 12), Admit::Fresh { skip: 2, gap: 0 });
        assert_eq!(d.admit(1, 11, 12), Admit::Duplicate);
        assert_eq!(d.current(), Some((2, 5)));
        assert_eq!(d.admit(2, 1, 5), Admit::Duplicate);
    }

    proptest! {
        /// Whatever the order and repetition of batches (over at most MAX_OLD_EPOCHS + 1
        /// epochs), no (epoch, seq) is admitted twice.
        #[test]
        fn never_admits_twice(batches in prop::collection::vec((0u64..4, 1u64..60, 0u64..12), 1..200)) {
            let mut d = Dedupe::default();
            let mut seen = HashSet::new();
            for (epoch, first, len) in batches {
                let last = first + len;
                if let Admit::Fresh { skip, .. } = d.admit(epoch, first, last) {
                    for seq in first + skip as u64..=last {
                        prop_assert!(seen.insert((epoch, seq)), "({epoch}, {seq}) admitted twice");
                    }
                }
            }
        }

        /// In-order delivery with arbitrary redeliveries of earlier batches admits every
        /// reading exactly once.
        #[test]
        fn in_order_with_redelivery_admits_all(
            sizes in prop::collection::vec(1u64..20, 1..40),
            redeliver in prop::collection::vec(any::<prop::sample::Index>(), 0..40),
        ) {
            let mut batches = Vec::new();
            let mut next = 1;
            for s in &sizes {
                batches.push((next, next + s - 1));
                next += s;
            }
            let mut d = Dedupe::default();
            let mut admitted = 0u64;
            let mut r = redeliver.iter();
            for (i, &(first, last)) in batches.iter().enumerate() {
                if let Admit::Fresh { skip, gap } = d.admit(9, first, last) {
                    prop_assert_eq!(gap, 0);
                    admitted += last - first + 1 - skip as u64;
                }
                if let Some(idx) = r.next() {
                    let (f, l) = batches[idx.index(i + 1)];
                    prop_assert_eq!(d.admit(9, f, l), Admit::Duplicate);
                }
            }
            prop_assert_eq!(admitted, next - 1);
        }
    }
}
