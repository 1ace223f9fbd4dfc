//! The scans of a decision: over every instance (with loops specialised for decisions
//! that read only headroom), over the least loaded buckets of a spread, from the previous
//! decision's ties, or until the best few by memory are certain; and the per-slot figures
//! they compare (scores, ports, capacity, scan rank).

use super::{Key, Round, Score};
use crate::capacity::{capacity_with, ports_available, Capacity};
use crate::pool::Head;
use crate::rules::MAX_STRATEGIES;
use crate::strategy_placer::source::Source;
use std::cmp::{Ordering, Reverse};

impl<S: Source> Round<'_, S> {
    /// The ties of a later decision of the batch without a scan: an untouched instance
    /// keeps its key, so the best are among the last scan's ties and the instances placed
    /// on since; both are in slot order, so the ties come out exactly as a scan finds them.
    /// Every untouched instance outside the last scan's ties has a worse key than they had,
    /// so they are needed only once those ties are all placed on and no instance placed on
    /// since is as good: then (or with no previous scan) this returns false and the caller
    /// scans.
    pub(super) fn ties_since_last_scan(&mut self, need: (i64, i64), needs_ports: bool) -> bool {
        let Some((base_key, base)) = self.base.take() else {
            return false;
        };
        let mut best_key: Option<Key> = None;
        let changed = std::mem::take(&mut self.changed);
        for &slot in &changed {
            self.consider(slot, need, needs_ports, &mut best_key, 0);
        }
        self.changed = changed;
        match best_key.map(|key| key.cmp(&base_key)) {
            Some(Ordering::Less) => {}
            Some(Ordering::Equal) => {
                let placed_on = std::mem::take(&mut self.ties);
                self.ties.reserve(base.len() + placed_on.len());
                let (mut a, mut b) = (base.iter().peekable(), placed_on.iter().peekable());
                while let (Some(&&x), Some(&&y)) = (a.peek(), b.peek()) {
                    if x < y {
                        self.ties.push(x);
                        a.next();
                    } else {
                        self.ties.push(y);
                        b.next();
                    }
                }
                self.ties.extend(a);
                self.ties.extend(b);
            }
            _ if base.is_empty() => {
                self.ties.clear();
                return false;
            }
            _ => {
                self.ties.clear();
                self.ties.extend_from_slice(&base);
            }
        }
        self.base = Some((base_key, base));
        true
    }

    /// A slot's free (CPU, memory) after this batch, if it is eligible and `need` fits.
    #[inline(always)]
    fn fitting(&self, slot: usize, (cpu, memory): (i64, i64)) -> Option<(i64, i64)> {
        if !self.eligible(slot) {
            return None;
        }
        let (free_cpu, free_memory) = self.remaining(slot);
        (free_cpu >= cpu && free_memory >= memory).then_some((free_cpu, free_memory))
    }

    /// Adds `slot` to the ties if it fits and its key is at least as good as the best so
    /// far (a better key starts the ties over). The scores before `known` are equal for
    /// every slot the caller considers, and not computed.
    #[inline(always)]
    fn consider(
        &mut self,
        slot: usize,
        (cpu, memory): (i64, i64),
        needs_ports: bool,
        best_key: &mut Option<Key>,
        known: usize,
    ) {
        let Some((free_cpu, free_memory)) = self.fitting(slot, (cpu, memory)) else {
            return;
        };
        // Lexicographic, one score at a time: most slots lose on the first.
        let (cpu_left, memory_left) = (free_cpu - cpu, free_memory - memory);
        let mut key: Key = [0; MAX_STRATEGIES];
        let mut ordering = if best_key.is_none() {
            Ordering::Less
        } else {
            Ordering::Equal
        };
        for (i, score) in self.scores.iter().enumerate().skip(known) {
            key[i] = self.score(*score, slot, cpu_left, memory_left);
            if let Some(best) = best_key {
                if ordering == Ordering::Equal {
                    ordering = key[i].cmp(&best[i]);
                    if ordering == Ordering::Greater {
                        return;
                    }
                }
            }
        }
        if self.unmet(slot).is_some() || (needs_ports && !self.ports_free(slot)) {
            return;
        }
        if ordering == Ordering::Less {
            self.ties.clear();
            *best_key = Some(key);
        }
        self.ties.push(slot);
    }

    /// The full scan of a decision whose only strategy is binpack and that has nothing to
    /// check per slot beyond its headroom (no constraint, no port, nothing taken or
    /// excluded yet), in two passes without branches on the data: the least headroom left
    /// among the slots that fit, then the slots that leave exactly that. Returns false,
    /// having done nothing, when the decision is not of that kind.
    pub(super) fn scan_plain_binpack(
        &mut self,
        (cpu, memory): (i64, i64),
        needs_ports: bool,
        best_key: &mut Option<Key>,
    ) -> bool {
        let by_memory = match self.scores.as_slice() {
            [Score::BinpackMemory] => true,
            [Score::BinpackCpu] => false,
            _ => return false,
        };
        if !self.specialised_scans
            || needs_ports
            || self.any_excluded
            || !self.taken.is_empty()
            || !self.member_of.is_empty()
            || self.distinct.is_some()
        {
            return false;
        }
        let left = |head: &Head| -> i64 {
            let fits = head.fits(cpu, memory);
            let left = if by_memory {
                head.memory - memory
            } else {
                head.cpu - cpu
            };
            if fits {
                left
            } else {
                i64::MAX
            }
        };
        let best = self.heads.iter().map(left).min().unwrap_or(i64::MAX);
        self.ties.clear();
        if best == i64::MAX {
            return true;
        }
        let heads = self.heads;
        let ties = heads
            .iter()
            .enumerate()
            .filter(|(_, head)| left(head) == best);
        self.ties.extend(ties.map(|(slot, _)| slot));
        let mut key: Key = [0; MAX_STRATEGIES];
        key[0] = best;
        *best_key = Some(key);
        true
    }

    /// [`Round::consider`] of every slot of `slots`. When at most one score is left to
    /// compute and it reads only the slot's headroom (binpack, or nothing), the loop is
    /// specialised for it: most decisions scan every instance this way.
    pub(super) fn consider_all(
        &mut self,
        slots: impl Iterator<Item = usize>,
        need: (i64, i64),
        needs_ports: bool,
        best_key: &mut Option<Key>,
        known: usize,
    ) {
        if self.specialised_scans {
            let by_memory = match self.scores.get(known..).unwrap_or(&[]) {
                [] if !needs_ports && self.member_of.is_empty() && self.distinct.is_none() => {
                    return self.extend_fitting(slots, need, best_key);
                }
                [] => {
                    let equal = |_, _| 0;
                    return self.consider_by_headroom(
                        slots,
                        need,
                        needs_ports,
                        best_key,
                        None,
                        equal,
                    );
                }
                [Score::BinpackMemory] => Some(true),
                [Score::BinpackCpu] => Some(false),
                _ => None,
            };
            if let Some(by_memory) = by_memory {
                // `by_memory` is the same for every slot: a branch always predicted right.
                let left = move |cpu, memory| if by_memory { memory } else { cpu };
                let at = Some(known);
                return self.consider_by_headroom(slots, need, needs_ports, best_key, at, left);
            }
        }
        for slot in slots {
            self.consider(slot, need, needs_ports, best_key, known);
        }
    }

    /// [`Round::consider`] of every slot of `slots` when no score is left to compute and
    /// nothing is checked per slot beyond its headroom (no constraint, no port): every
    /// slot that fits ties, so the ties are the fitting slots, found without branching on
    /// each slot's figures.
    fn extend_fitting(
        &mut self,
        slots: impl Iterator<Item = usize>,
        (cpu, memory): (i64, i64),
        best_key: &mut Option<Key>,
    ) {
        let heads = self.heads;
        let before = self.ties.len();
        if self.taken.is_empty() && !self.any_excluded {
            self.ties
                .extend(slots.filter(|slot| heads[*slot].fits(cpu, memory)));
        } else {
            for slot in slots {
                if self.fitting(slot, (cpu, memory)).is_some() {
                    self.ties.push(slot);
                }
            }
        }
        if self.ties.len() > before || best_key.is_some() {
            if best_key.is_none() {
                self.ties.drain(..before);
            }
            *best_key = Some([0; MAX_STRATEGIES]);
        }
    }

    /// [`Round::consider`] when the key's only computed score (at index `at`, if any) is
    /// `score_of` the headroom left after the task (CPU, memory); the scores before it are
    /// equal for every slot the caller considers.
    #[inline(always)]
    fn consider_by_headroom(
        &mut self,
        slots: impl Iterator<Item = usize>,
        (cpu, memory): (i64, i64),
        needs_ports: bool,
        best_key: &mut Option<Key>,
        at: Option<usize>,
        score_of: impl Fn(i64, i64) -> i64,
    ) {
        let mut best = best_key.map(|key| at.map_or(0, |i| key[i]));
        for slot in slots {
            let Some((free_cpu, free_memory)) = self.fitting(slot, (cpu, memory)) else {
                continue;
            };
            let score = score_of(free_cpu - cpu, free_memory - memory);
            let ordering = best.map_or(Ordering::Less, |best| score.cmp(&best));
            if ordering == Ordering::Greater
                || self.unmet(slot).is_some()
                || (needs_ports && !self.ports_free(slot))
            {
                continue;
            }
            if ordering == Ordering::Less {
                self.ties.clear();
                best = Some(score);
            }
            self.ties.push(slot);
        }
        if let Some(best) = best {
            let mut key: Key = [0; MAX_STRATEGIES];
            if let Some(i) = at {
                key[i] = best;
            }
            *best_key = Some(key);
        }
    }

    #[inline]
    fn score(&self, score: Score, slot: usize, cpu_left: i64, memory_left: i64) -> i64 {
        match score {
            Score::BinpackCpu => cpu_left,
            Score::BinpackMemory => memory_left,
            Score::SpreadInstance => self.group.as_ref().map_or(0, |g| i64::from(g[slot])),
            Score::SpreadAttribute(b) => {
                let buckets = &self.buckets[b];
                buckets.tasks[buckets.column.of[slot] as usize] as i64
            }
        }
    }

    pub(super) fn promised(&self, slot: usize) -> (&[u16], &[u16]) {
        self.promised
            .get(&slot)
            .map_or((&[], &[]), |(tcp, udp)| (tcp.as_slice(), udp.as_slice()))
    }

    pub(super) fn ports_free(&self, slot: usize) -> bool {
        let (tcp, udp) = self.promised(slot);
        ports_available(self.source.instance(slot), tcp, udp, self.request.demand).is_ok()
    }

    pub(super) fn capacity(&self, slot: usize) -> Capacity {
        let (cpu, memory) = self.remaining(slot);
        let (tcp, udp) = self.promised(slot);
        capacity_with(self.source.instance(slot), cpu, memory, tcp, udp)
    }

    /// Every slot in scan order, keeping the `limit` best by [`Round::default_key`].
    pub(super) fn scan_all(&mut self, limit: usize, need: (i64, i64), needs_ports: bool) {
        let n = self.heads.len();
        let start = self.start;
        for slot in (start..n).chain(0..start) {
            let Some((_, free_memory)) = self.fitting(slot, need) else {
                continue;
            };
            // Slots come in scan order, so one that is not joinable enters a full list
            // only with more memory; the key (and its rank) is computed for those that
            // enter.
            let joinable = self.joinable(slot);
            let memory_key = if joinable {
                self.heads[slot].memory
            } else {
                free_memory
            };
            let enters = self.best.len() < limit
                || self.best.last().is_some_and(|(m, r, _)| {
                    memory_key > *m
                        || (joinable && memory_key == *m && Reverse(self.rank(slot)) > *r)
                });
            if !enters || self.unmet(slot).is_some() || (needs_ports && !self.ports_free(slot)) {
                continue;
            }
            let key = self.default_key(slot, free_memory);
            self.insert_best((key.0, key.1, slot), limit);
        }
    }

    /// What [`Round::scan_all`] keeps, visiting the touched slots (promised elsewhere or
    /// placed by this batch) first and then the others in scan order, until the list is
    /// full of slots that no later one can beat: an untouched slot offers at most `max`
    /// memory and ranks after every slot scanned before it.
    pub(super) fn scan_until_enough(
        &mut self,
        max: i64,
        limit: usize,
        need: (i64, i64),
        needs_ports: bool,
    ) {
        let n = self.heads.len();
        let mut touched: Vec<usize> = self.taken.keys().copied().collect();
        touched.sort_unstable();
        for slot in touched {
            self.consider_default(slot, limit, need, needs_ports);
        }
        let start = self.start;
        for slot in (start..n).chain(0..start) {
            if self.best.len() >= limit {
                let untouched_best = (max, Reverse(n + self.rank(slot)));
                if self
                    .best
                    .last()
                    .is_some_and(|(m, r, _)| (*m, *r) >= untouched_best)
                {
                    break;
                }
            }
            if !self.touched.contains(slot) {
                self.consider_default(slot, limit, need, needs_ports);
            }
        }
    }

    /// Keeps `slot` among the `limit` best by [`Round::default_key`] if it fits and ranks
    /// so, whatever the order slots come in.
    fn consider_default(&mut self, slot: usize, limit: usize, need: (i64, i64), needs_ports: bool) {
        let Some((_, free_memory)) = self.fitting(slot, need) else {
            return;
        };
        let key = self.default_key(slot, free_memory);
        let enters =
            self.best.len() < limit || self.best.last().is_some_and(|(m, r, _)| key > (*m, *r));
        if !enters || self.unmet(slot).is_some() || (needs_ports && !self.ports_free(slot)) {
            return;
        }
        self.insert_best((key.0, key.1, slot), limit);
    }

    /// Keeps `best` sorted best first (most memory, then earliest in the scan), at most
    /// `limit`.
    fn insert_best(&mut self, entry: (i64, Reverse<usize>, usize), limit: usize) {
        if self.best.len() >= limit {
            self.best.pop();
        }
        let at = self
            .best
            .iter()
            .position(|e| (entry.0, entry.1) > (e.0, e.1))
            .unwrap_or(self.best.len());
        self.best.insert(at, entry);
    }

    /// A slot's place in the batch's scan (which starts at a random slot).
    pub(super) fn rank(&self, slot: usize) -> usize {
        let n = self.heads.len();
        (slot + n - self.start) % n
    }
}
