//! Which publishers of a fanout run publish in which rooms, each publisher's slot
//! among its room's publishers, and the sequence streams of a room: one per
//! publisher and lane (a lane is one of an API publisher's HTTP connections, each
//! with its own sequence numbers; a WebSocket publisher has one lane). A stream's
//! index in its room is that of its sequence check; its stamp id is
//! `publisher * lanes + lane`.

/// Which publishers publish in which rooms, and the room names.
#[derive(Debug)]
pub(crate) struct Plan {
    rooms: u32,
    pub(super) publishers: u32,
    /// Sequence streams per publisher and room.
    pub(super) lanes: u32,
    /// Room names, by room.
    pub(super) names: Vec<String>,
}

impl Plan {
    pub(super) fn new(rooms: u32, publishers: u32, lanes: u32, names: Vec<String>) -> Plan {
        Plan {
            rooms,
            publishers,
            lanes: lanes.max(1),
            names,
        }
    }

    /// The stamp id of publisher `p`'s lane `lane`.
    pub(super) fn stamp_id(&self, p: u32, lane: u32) -> u32 {
        p * self.lanes + lane
    }

    /// Sequence streams of room `r`.
    pub(super) fn streams_in(&self, r: u32) -> usize {
        self.publishers_in(r) * self.lanes as usize
    }

    /// The index among room `r`'s streams of the stream with stamp id `s`, if it
    /// publishes there.
    pub(super) fn stream(&self, r: u32, s: u32) -> Option<usize> {
        let slot = self.slot(r, s / self.lanes)?;
        Some(slot * self.lanes as usize + (s % self.lanes) as usize)
    }

    /// The stamp id of the stream at `index` of room `r`.
    pub(super) fn stamp_at(&self, r: u32, index: usize) -> u32 {
        let lanes = self.lanes as usize;
        self.stamp_id(self.publisher_at(r, index / lanes), (index % lanes) as u32)
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
        for (rooms, publishers, lanes) in [
            (1, 1, 1),
            (1, 3, 1),
            (2, 5, 1),
            (5, 2, 1),
            (7, 3, 1),
            (4, 4, 1),
            (1, 1, 4),
            (5, 2, 3),
            (2, 5, 2),
        ] {
            let plan = Plan::new(rooms, publishers, lanes, options::room_names("t", rooms));
            let mut per_room = vec![0usize; rooms as usize];
            for p in 0..publishers {
                let rs = plan.publisher_rooms(p);
                assert!(!rs.is_empty(), "publisher {p} has rooms");
                for r in rs {
                    let slot = plan.slot(r, p).expect("own room has a slot");
                    assert_eq!(plan.publisher_at(r, slot), p);
                    per_room[r as usize] += 1;
                    for lane in 0..lanes {
                        let s = plan.stamp_id(p, lane);
                        let i = plan.stream(r, s).expect("own room has a stream");
                        assert!(i < plan.streams_in(r));
                        assert_eq!(plan.stamp_at(r, i), s);
                    }
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
