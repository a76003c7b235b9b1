//! A room's heroes (client-server spec, "Calculating the display name for
//! a room"): the members a room without a name or canonical alias is named
//! after. The same few for `/sync`'s summary, sliding sync's `heroes` and
//! a partial-state `send_join` answer (whose member events it keeps).

use ruma::UserId;

use crate::storage::Membership;

/// Heroes named at most.
pub const MAX_HEROES: usize = 5;

/// Up to [`MAX_HEROES`] members other than `me`: those joined or invited,
/// earliest first (by stream ordering); when there are none, those who
/// left or were banned.
pub fn heroes<'a>(members: &'a [Membership], me: &UserId) -> Vec<&'a Membership> {
    let mut sorted: Vec<&Membership> = members.iter().collect();
    sorted.sort_by_key(|m| m.stream_ordering);
    let pick = |kinds: &[&str]| -> Vec<&'a Membership> {
        sorted
            .iter()
            .filter(|m| m.user_id != me && kinds.contains(&m.membership.as_str()))
            .take(MAX_HEROES)
            .copied()
            .collect()
    };
    let heroes = pick(&["join", "invite"]);
    if heroes.is_empty() {
        pick(&["leave", "ban"])
    } else {
        heroes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(user: &str, membership: &str, stream: i64) -> Membership {
        Membership {
            room_id: "!r:x".try_into().unwrap(),
            user_id: user.try_into().unwrap(),
            membership: membership.to_owned(),
            event_id: format!("$e{stream}").try_into().unwrap(),
            stream_ordering: stream,
        }
    }

    #[test]
    fn joined_and_invited_first_then_the_departed() {
        let me: &UserId = "@me:x".try_into().unwrap();
        let members = vec![
            member("@me:x", "join", 1),
            member("@c:x", "invite", 5),
            member("@b:x", "join", 3),
            member("@gone:x", "leave", 2),
        ];
        let names: Vec<&str> = heroes(&members, me).iter().map(|m| m.user_id.as_str()).collect();
        assert_eq!(names, ["@b:x", "@c:x"]);
        let alone = vec![member("@me:x", "join", 1), member("@gone:x", "leave", 2)];
        let names: Vec<&str> = heroes(&alone, me).iter().map(|m| m.user_id.as_str()).collect();
        assert_eq!(names, ["@gone:x"]);
        let many: Vec<Membership> = (0..9).map(|i| member(&format!("@u{i}:x"), "join", i)).collect();
        assert_eq!(heroes(&many, me).len(), MAX_HEROES);
    }
}
