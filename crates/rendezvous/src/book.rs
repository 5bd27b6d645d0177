//! The phone book itself: rooms of signed registrations with their expiry and the address each
//! was observed from, and every rule about what may enter (signature, clock skew, replay, TTL,
//! capacity). Sans-IO: time comes in as `now_ms`, nothing here touches sockets, files or the
//! clock, so the whole policy is tested without a server.

use std::collections::HashMap;

use meshsync_core::DeviceId;

use crate::registration::check_room;
use crate::{Registration, RendezvousError};

/// How far `issued_at_ms` may be from the service's clock, either way: 10 minutes.
pub const ISSUED_AT_SKEW_MS_MAX: u64 = 10 * 60 * 1000;
/// Expired entries and idle rooms are swept at most this often (sweeping is a full scan).
const SWEEP_INTERVAL_MS: u64 = 1000;

/// Capacity and lifetime rules of a [`Book`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BookLimits {
    pub ttl_default_s: u64,
    pub ttl_max_s: u64,
    pub rooms_max: usize,
    pub registrations_per_room_max: usize,
    pub registrations_max: usize,
}

/// Why a registration or a room was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum BookError {
    /// The registration itself is invalid.
    #[error(transparent)]
    Invalid(#[from] RendezvousError),
    /// `issued_at_ms` is too far from the service's clock.
    #[error(
        "issued_at_ms is {skew_s} s away from this service's clock (at most {} s allowed); check the device's clock",
        ISSUED_AT_SKEW_MS_MAX / 1000
    )]
    Stale { skew_s: u64 },
    /// `ttl_s` is above the service's maximum.
    #[error("ttl_s {ttl_s} is above this service's maximum of {ttl_max_s} s")]
    TtlTooLong { ttl_s: u64, ttl_max_s: u64 },
    /// The registration would already have expired.
    #[error("the registration expired at {expires_at_ms} ms, before it arrived; sign a fresh one")]
    Expired { expires_at_ms: u64 },
    /// Not newer than the entry already held for this device in this room.
    #[error("a registration of this device issued at {stored_ms} ms is already held; a new one must be issued later (this one: {issued_ms} ms)")]
    Replay { stored_ms: u64, issued_ms: u64 },
    /// The room holds as many devices as it may.
    #[error("this room holds {max} devices, the most it may; wait for entries to expire")]
    RoomFull { max: usize },
    /// The service holds as many rooms as it may.
    #[error("this service holds {max} rooms, the most it may; try later or run your own rendezvous")]
    RoomsFull { max: usize },
    /// The service holds as many registrations as it may.
    #[error("this service holds {max} registrations, the most it may; try later or run your own rendezvous")]
    RegistrationsFull { max: usize },
}

/// One device's entry in a room.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Entry {
    /// The registration exactly as signed.
    pub registration: Registration,
    /// When it stops being handed out.
    pub expires_at_ms: u64,
    /// The IP address the registration came from, as the service saw it (not signed).
    pub observed: Option<String>,
}

#[derive(Debug, Default)]
struct Room {
    entries: HashMap<DeviceId, Entry>,
    /// An empty room is forgotten after this time: the expiry of its last entry, or the default
    /// TTL after it was created, whichever is later.
    kept_until_ms: u64,
}

/// A registration whose fields and signature have been checked: the only kind the book takes.
/// The check is the expensive part of a registration, and this way it runs before the book's
/// lock is taken.
#[derive(Debug, Clone)]
pub(crate) struct Verified {
    registration: Registration,
    device_id: DeviceId,
}

impl Verified {
    /// Checks `registration` (see [`Registration::verify`]).
    pub fn new(registration: Registration) -> Result<Verified, RendezvousError> {
        let device_id = registration.verify()?;
        Ok(Verified { registration, device_id })
    }
}

/// The rooms and their registrations, with their limits.
#[derive(Debug)]
pub(crate) struct Book {
    limits: BookLimits,
    rooms: HashMap<String, Room>,
    registrations: usize,
    next_sweep_ms: u64,
}

impl Book {
    pub fn new(limits: BookLimits) -> Book {
        debug_assert!(limits.ttl_default_s >= 1 && limits.ttl_default_s <= limits.ttl_max_s);
        Book { limits, rooms: HashMap::new(), registrations: 0, next_sweep_ms: 0 }
    }

    /// Rooms held (some may be empty).
    pub fn rooms(&self) -> usize {
        self.rooms.len()
    }

    /// Registrations held.
    pub fn registrations(&self) -> usize {
        self.registrations
    }

    /// Creates `room` if it does not exist: `Ok(true)` when created.
    pub fn create_room(&mut self, now_ms: u64, room: &str) -> Result<bool, BookError> {
        check_room(room)?;
        self.sweep_if_due(now_ms);
        if self.rooms.contains_key(room) {
            return Ok(false);
        }
        self.make_room(now_ms, room)?;
        Ok(true)
    }

    /// Checks and stores a registration received at `now_ms` from `observed`; returns when it
    /// expires.
    pub fn register(&mut self, now_ms: u64, verified: Verified, observed: Option<String>) -> Result<u64, BookError> {
        let Verified { registration, device_id } = verified;
        let skew_ms = now_ms.abs_diff(registration.issued_at_ms);
        if skew_ms > ISSUED_AT_SKEW_MS_MAX {
            return Err(BookError::Stale { skew_s: skew_ms / 1000 });
        }
        self.sweep_if_due(now_ms);
        self.insert(now_ms, device_id, registration, observed)
    }

    /// Takes back an entry from a snapshot: the same checks as [`Book::register`] except the
    /// clock skew (it was checked when it arrived). Of two entries for one device in one room,
    /// the one issued later stays.
    pub fn restore(&mut self, now_ms: u64, verified: Verified, observed: Option<String>) -> Result<u64, BookError> {
        let Verified { registration, device_id } = verified;
        self.insert(now_ms, device_id, registration, observed)
    }

    fn insert(
        &mut self,
        now_ms: u64,
        device_id: DeviceId,
        registration: Registration,
        observed: Option<String>,
    ) -> Result<u64, BookError> {
        let ttl_s = match registration.ttl_s {
            0 => self.limits.ttl_default_s,
            ttl_s if ttl_s > self.limits.ttl_max_s => {
                return Err(BookError::TtlTooLong { ttl_s, ttl_max_s: self.limits.ttl_max_s })
            }
            ttl_s => ttl_s,
        };
        // The expiry follows from signed fields, so a client can check that the service does not
        // hand an entry out for longer than its device asked.
        let expires_at_ms = registration.issued_at_ms.saturating_add(ttl_s * 1000);
        if expires_at_ms <= now_ms {
            return Err(BookError::Expired { expires_at_ms });
        }
        let held = self.rooms.get(&registration.room).and_then(|room| room.entries.get(&device_id));
        match held {
            Some(stored) if stored.expires_at_ms > now_ms => {
                if registration.issued_at_ms <= stored.registration.issued_at_ms {
                    return Err(BookError::Replay {
                        stored_ms: stored.registration.issued_at_ms,
                        issued_ms: registration.issued_at_ms,
                    });
                }
            }
            // An expired entry is replaced whatever its time, as if it had been swept.
            Some(_) => {}
            None => {
                if self.registrations >= self.limits.registrations_max {
                    self.sweep(now_ms);
                    if self.registrations >= self.limits.registrations_max {
                        return Err(BookError::RegistrationsFull { max: self.limits.registrations_max });
                    }
                }
            }
        }
        if !self.rooms.contains_key(&registration.room) {
            self.make_room(now_ms, &registration.room)?;
        }
        let room = self.rooms.get_mut(&registration.room).expect("the room exists: it was just checked or made");
        if !room.entries.contains_key(&device_id) {
            if room.entries.len() >= self.limits.registrations_per_room_max {
                let before = room.entries.len();
                room.entries.retain(|_, entry| entry.expires_at_ms > now_ms);
                self.registrations -= before - room.entries.len();
                if room.entries.len() >= self.limits.registrations_per_room_max {
                    return Err(BookError::RoomFull { max: self.limits.registrations_per_room_max });
                }
            }
            self.registrations += 1;
        }
        room.kept_until_ms = room.kept_until_ms.max(expires_at_ms);
        room.entries.insert(device_id, Entry { registration, expires_at_ms, observed });
        Ok(expires_at_ms)
    }

    /// Makes an empty room, sweeping once first if the book is full.
    fn make_room(&mut self, now_ms: u64, room: &str) -> Result<(), BookError> {
        if self.rooms.len() >= self.limits.rooms_max {
            self.sweep(now_ms);
            if self.rooms.len() >= self.limits.rooms_max {
                return Err(BookError::RoomsFull { max: self.limits.rooms_max });
            }
        }
        let kept_until_ms = now_ms.saturating_add(self.limits.ttl_default_s * 1000);
        self.rooms.insert(room.to_string(), Room { entries: HashMap::new(), kept_until_ms });
        Ok(())
    }

    /// The live entries of `room`, in device id order; its expired entries are dropped.
    pub fn peers(&mut self, now_ms: u64, room: &str) -> Result<Vec<Entry>, BookError> {
        check_room(room)?;
        let Some(held) = self.rooms.get_mut(room) else {
            return Ok(Vec::new());
        };
        let before = held.entries.len();
        held.entries.retain(|_, entry| entry.expires_at_ms > now_ms);
        self.registrations -= before - held.entries.len();
        let mut entries: Vec<(&DeviceId, &Entry)> = held.entries.iter().collect();
        entries.sort_by_key(|(device, _)| **device);
        Ok(entries.into_iter().map(|(_, entry)| entry.clone()).collect())
    }

    /// Every entry, for a snapshot.
    pub fn entries(&self) -> Vec<Entry> {
        self.rooms.values().flat_map(|room| room.entries.values().cloned()).collect()
    }

    /// Sweeps if the last sweep was long enough ago.
    pub fn sweep_if_due(&mut self, now_ms: u64) {
        if now_ms >= self.next_sweep_ms {
            self.sweep(now_ms);
        }
    }

    /// Drops expired entries and empty rooms whose time is over.
    pub fn sweep(&mut self, now_ms: u64) {
        self.next_sweep_ms = now_ms.saturating_add(SWEEP_INTERVAL_MS);
        let mut dropped = 0;
        self.rooms.retain(|_, room| {
            let before = room.entries.len();
            room.entries.retain(|_, entry| entry.expires_at_ms > now_ms);
            dropped += before - room.entries.len();
            !room.entries.is_empty() || room.kept_until_ms > now_ms
        });
        self.registrations -= dropped;
        debug_assert_eq!(self.registrations, self.rooms.values().map(|r| r.entries.len()).sum::<usize>());
    }
}

#[cfg(test)]
mod tests {
    use meshsync_net::Identity;

    use super::*;
    use crate::room_id;

    const NOW: u64 = 1_700_000_000_000;

    fn limits() -> BookLimits {
        BookLimits {
            ttl_default_s: 100,
            ttl_max_s: 1000,
            rooms_max: 3,
            registrations_per_room_max: 2,
            registrations_max: 4,
        }
    }

    fn device(n: u8) -> Identity {
        Identity::from_seed(&[n; 32]).unwrap()
    }

    fn sign(n: u8, room: &str, ttl_s: u64, at: u64) -> Verified {
        Verified::new(Registration::sign(&device(n), room, vec!["10.0.0.5:7710".into()], ttl_s, at)).unwrap()
    }

    #[test]
    fn an_entry_lives_for_its_ttl_from_its_issue_time() {
        let mut book = Book::new(limits());
        let room = room_id(b"r");
        assert_eq!(book.register(NOW, sign(1, &room, 10, NOW - 1000), None), Ok(NOW + 9_000));
        assert_eq!(book.peers(NOW + 8_999, &room).unwrap().len(), 1);
        assert_eq!(book.peers(NOW + 9_000, &room).unwrap().len(), 0);
        assert_eq!(book.registrations(), 0);
        // 0 asks for the default.
        assert_eq!(book.register(NOW, sign(2, &room, 0, NOW), None), Ok(NOW + 100_000));
    }

    #[test]
    fn time_rules() {
        let mut book = Book::new(limits());
        let room = room_id(b"r");
        let skew = ISSUED_AT_SKEW_MS_MAX;
        assert!(matches!(book.register(NOW, sign(1, &room, 10, NOW - skew - 1), None), Err(BookError::Stale { .. })));
        assert!(matches!(book.register(NOW, sign(1, &room, 10, NOW + skew + 1), None), Err(BookError::Stale { .. })));
        assert!(matches!(book.register(NOW, sign(1, &room, 1001, NOW), None), Err(BookError::TtlTooLong { .. })));
        assert!(matches!(book.register(NOW, sign(1, &room, 1, NOW - 5000), None), Err(BookError::Expired { .. })));
        assert!(book.register(NOW, sign(1, &room, 10, NOW + skew), None).is_ok());
    }

    #[test]
    fn only_a_newer_registration_replaces_the_stored_one() {
        let mut book = Book::new(limits());
        let room = room_id(b"r");
        let first = sign(1, &room, 10, NOW);
        book.register(NOW, first.clone(), None).unwrap();
        assert!(matches!(book.register(NOW, first, None), Err(BookError::Replay { .. })));
        assert!(matches!(book.register(NOW, sign(1, &room, 10, NOW - 1), None), Err(BookError::Replay { .. })));
        book.register(NOW, sign(1, &room, 10, NOW + 1), Some("192.0.2.1".into())).unwrap();
        let peers = book.peers(NOW, &room).unwrap();
        assert_eq!(peers.len(), 1);
        assert_eq!(peers[0].registration.issued_at_ms, NOW + 1);
        assert_eq!(peers[0].observed.as_deref(), Some("192.0.2.1"));
        assert_eq!(book.registrations(), 1);
    }

    #[test]
    fn capacity_is_enforced_after_dropping_what_expired() {
        let mut book = Book::new(limits());
        let (a, b) = (room_id(b"a"), room_id(b"b"));
        book.register(NOW, sign(1, &a, 1, NOW), None).unwrap();
        book.register(NOW, sign(2, &a, 10, NOW), None).unwrap();
        assert_eq!(book.register(NOW, sign(3, &a, 10, NOW), None), Err(BookError::RoomFull { max: 2 }));
        // Once device 1 expired, its place is free.
        book.register(NOW + 1000, sign(3, &a, 10, NOW + 1000), None).unwrap();
        book.register(NOW + 1000, sign(1, &b, 10, NOW + 1000), None).unwrap();
        book.register(NOW + 1000, sign(2, &b, 10, NOW + 1000), None).unwrap();
        assert_eq!(book.registrations(), 4);
        let c = room_id(b"c");
        assert_eq!(
            book.register(NOW + 1000, sign(4, &c, 10, NOW + 1000), None),
            Err(BookError::RegistrationsFull { max: 4 })
        );
        // A refused registration makes no room; rooms are capped too.
        assert_eq!(book.rooms(), 2);
        assert_eq!(book.create_room(NOW + 1000, &c), Ok(true));
        assert_eq!(book.create_room(NOW + 1000, &room_id(b"d")), Err(BookError::RoomsFull { max: 3 }));
    }

    #[test]
    fn empty_rooms_are_forgotten_after_the_default_ttl() {
        let mut book = Book::new(limits());
        let room = room_id(b"r");
        assert_eq!(book.create_room(NOW, &room), Ok(true));
        assert_eq!(book.create_room(NOW, &room), Ok(false));
        book.sweep(NOW + 99_999);
        assert_eq!(book.rooms(), 1);
        book.sweep(NOW + 100_000);
        assert_eq!(book.rooms(), 0);
    }

    #[test]
    fn restore_keeps_the_newest() {
        let mut book = Book::new(limits());
        let room = room_id(b"r");
        book.restore(NOW, sign(1, &room, 10, NOW - 1), None).unwrap();
        book.restore(NOW, sign(1, &room, 10, NOW - 2), None).unwrap_err();
        assert_eq!(book.registrations(), 1);
    }
}
