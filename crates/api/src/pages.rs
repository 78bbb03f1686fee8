//! Pages of a machine list. A cursor names the position after the last
//! machine of the previous page by that machine's creation time and id (the
//! list's order), so a page still follows when that machine was destroyed
//! meanwhile. It is opaque to clients: URL-safe base64 of `created_at id`.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use midge_types::Machine;

/// Where a page starts: after this machine of the list's order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    created_at: String,
    id: String,
}

impl Cursor {
    fn after(machine: &Machine) -> Cursor {
        Cursor {
            created_at: machine.created_at.clone(),
            id: machine.id.clone(),
        }
    }

    pub fn encode(&self) -> String {
        URL_SAFE_NO_PAD.encode(format!("{} {}", self.created_at, self.id))
    }

    /// `None` when the text is not a cursor this server handed out.
    pub fn decode(text: &str) -> Option<Cursor> {
        let bytes = URL_SAFE_NO_PAD.decode(text.trim()).ok()?;
        let text = String::from_utf8(bytes).ok()?;
        let (created_at, id) = text.split_once(' ')?;
        (!created_at.is_empty() && !id.is_empty()).then(|| Cursor {
            created_at: created_at.to_string(),
            id: id.to_string(),
        })
    }

    /// Whether `machine` comes after the cursor in the list's order
    /// (creation time, then id).
    fn precedes(&self, machine: &Machine) -> bool {
        (machine.created_at.as_str(), machine.id.as_str())
            > (self.created_at.as_str(), self.id.as_str())
    }
}

/// The page of `machines` (in the list's order) after `cursor`, at most
/// `limit` long, and the next page's cursor when more follow.
pub fn page(
    machines: Vec<Machine>,
    cursor: Option<&Cursor>,
    limit: Option<usize>,
) -> (Vec<Machine>, Option<Cursor>) {
    let mut page: Vec<Machine> = machines
        .into_iter()
        .filter(|m| cursor.is_none_or(|c| c.precedes(m)))
        .collect();
    let next = match limit {
        Some(limit) if page.len() > limit => {
            page.truncate(limit);
            page.last().map(Cursor::after)
        }
        _ => None,
    };
    (page, next)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn machine(created_at: &str, id: &str) -> Machine {
        serde_json::from_value(serde_json::json!({
            "id": id, "name": id, "state": "stopped", "region": "local",
            "instance_id": "i", "version": "v", "private_ip": "fdaa::2",
            "image_ref": {"registry": "r", "repository": "x", "tag": "t", "digest": "d"}, "created_at": created_at, "updated_at": created_at,
            "host_status": "ok"
        }))
        .unwrap()
    }

    fn ids(machines: &[Machine]) -> Vec<&str> {
        machines.iter().map(|m| m.id.as_str()).collect()
    }

    #[test]
    fn pages_follow_the_order_even_when_the_cursors_machine_is_gone() {
        let all = vec![
            machine("2026-01-01T00:00:01Z", "a"),
            machine("2026-01-01T00:00:02Z", "b"),
            machine("2026-01-01T00:00:02Z", "c"),
            machine("2026-01-01T00:00:03Z", "d"),
        ];
        let (first, next) = page(all.clone(), None, Some(2));
        assert_eq!(ids(&first), ["a", "b"]);
        let next = Cursor::decode(&next.unwrap().encode()).unwrap();
        // "b" is destroyed before the next page is asked for.
        let remaining: Vec<Machine> = all.into_iter().filter(|m| m.id != "b").collect();
        let (second, last) = page(remaining, Some(&next), Some(2));
        assert_eq!(ids(&second), ["c", "d"]);
        assert_eq!(last, None);
    }

    #[test]
    fn only_cursors_handed_out_decode() {
        assert_eq!(Cursor::decode("nosuchmachine"), None);
        assert_eq!(Cursor::decode(""), None);
        assert_eq!(Cursor::decode(&URL_SAFE_NO_PAD.encode("no-space")), None);
        assert_eq!(Cursor::decode("%%%"), None);
    }
}
