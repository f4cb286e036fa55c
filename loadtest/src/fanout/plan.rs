//! Which publishers of a fanout run publish in which rooms, and each publisher's
//! slot among its room's publishers (the index of its sequence checks).

/// Which publishers publish in which rooms, and the room names.
#[derive(Debug)]
pub(crate) struct Plan {
    rooms: u32,
    pub(super) publishers: u32,
    /// Room names, by room.
    pub(super) names: Vec<String>,
}

impl Plan {
    pub(super) fn new(rooms: u32, publishers: u32, names: Vec<String>) -> Plan {
        Plan {
            rooms,
            publishers,
            names,
        }
    }

    /// The rooms publisher `p` publishes in (and subscribes to).
    pub(super) fn publisher_rooms(&self, p: u32) -> Vec<u32> {
        if self.publishers >= self.rooms {
            vec![p % self.rooms]
        } else {
            (p..self.rooms).step_by(self.publishers as usize).collect()
        }
    }

    /// Publishers of room `r`.
    pub(super) fn publishers_in(&self, r: u32) -> usize {
        if self.publishers >= self.rooms {
            ((self.publishers - r).div_ceil(self.rooms)) as usize
        } else {
            1
        }
    }

    /// Publisher `p`'s index among room `r`'s publishers, if it publishes there.
    pub(super) fn slot(&self, r: u32, p: u32) -> Option<usize> {
        if p >= self.publishers || r >= self.rooms {
            None
        } else if self.publishers >= self.rooms {
            (p % self.rooms == r).then_some((p / self.rooms) as usize)
        } else {
            (r % self.publishers == p).then_some(0)
        }
    }

    /// The publisher at `slot` of room `r`.
    pub(super) fn publisher_at(&self, r: u32, slot: usize) -> u32 {
        if self.publishers >= self.rooms {
            r + slot as u32 * self.rooms
        } else {
            r % self.publishers
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::options;

    #[test]
    fn plan_assigns_every_publisher_and_room() {
        for (rooms, publishers) in [(1, 1), (1, 3), (2, 5), (5, 2), (7, 3), (4, 4)] {
            let plan = Plan::new(rooms, publishers, options::room_names("t", rooms));
            let mut per_room = vec![0usize; rooms as usize];
            for p in 0..publishers {
                let rs = plan.publisher_rooms(p);
                assert!(!rs.is_empty(), "publisher {p} has rooms");
                for r in rs {
                    let slot = plan.slot(r, p).expect("own room has a slot");
                    assert_eq!(plan.publisher_at(r, slot), p);
                    per_room[r as usize] += 1;
                }
            }
            for r in 0..rooms {
                assert_eq!(
                    per_room[r as usize],
                    plan.publishers_in(r),
                    "{rooms}x{publishers} room {r}"
                );
                assert!(plan.publishers_in(r) >= 1);
            }
        }
    }
}
