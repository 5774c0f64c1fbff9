//! The rules a routes file must meet before it becomes the table in use:
//! on its own ([`check_alone`]: at start, in `meshgate check`) and as the
//! successor of the table in use ([`check_replacement`]: on every reload,
//! by SIGHUP or inotify alike).
//!
//! They guard against the files an operator or a broken writer produces by
//! mistake, which would otherwise take every route down at once: an empty
//! or truncated file, a file without a version over a versioned table, an
//! older file, a file that silently loses most routes. Each rule that
//! refuses a deliberate change can be lifted by the file itself
//! (`allow_empty`, `allow_drop`), so the file says what it means.

use crate::error::SnapshotError;
use crate::table::Table;

/// A table in use with fewer routes than this may shrink freely: the
/// "drops most routes" rule protects tables large enough that losing half
/// of them is rarely meant.
pub const DROP_GUARD_MIN_ROUTES: usize = 10;

/// What a routes file says about removing routes on purpose.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Intent {
    /// `allow_empty = true`: the file may hold no routes (and so may also
    /// replace any table).
    pub allow_empty: bool,
    /// `allow_drop = true`: the file may keep fewer than half of the routes
    /// of the table it replaces.
    pub allow_drop: bool,
}

/// Whether going from `current` routes to `offered` routes loses most of
/// them: fewer than half are left of a table of at least
/// [`DROP_GUARD_MIN_ROUTES`]. A writer that means such a change sets
/// `allow_drop` (the agent does when its table shrinks that much).
pub fn drops_most(current: usize, offered: usize) -> bool {
    current >= DROP_GUARD_MIN_ROUTES && offered.saturating_mul(2) < current
}

/// The rules for a table on its own: a table with no routes must say
/// `allow_empty = true`.
///
/// # Errors
///
/// [`SnapshotError::NoRoutes`].
pub fn check_alone(offered: &Table) -> Result<(), SnapshotError> {
    if offered.is_empty() && !offered.intent().allow_empty {
        return Err(SnapshotError::NoRoutes);
    }
    Ok(())
}

/// The rules for `offered` to replace `current`, the table in use:
///
/// 1. [`check_alone`].
/// 2. A file without `version` cannot replace a versioned table (an
///    unversioned table may be replaced by any file).
/// 3. The version never goes down; an equal version is accepted (re-reading
///    the same file).
/// 4. Unless the file says `allow_drop = true` (or `allow_empty = true`),
///    it may not keep fewer than half the routes of a table in use of at
///    least [`DROP_GUARD_MIN_ROUTES`] routes ([`drops_most`]).
///
/// # Errors
///
/// [`SnapshotError::NoRoutes`], [`SnapshotError::VersionMissing`],
/// [`SnapshotError::VersionRegressed`] or [`SnapshotError::DropsMost`].
pub fn check_replacement(current: &Table, offered: &Table) -> Result<(), SnapshotError> {
    check_alone(offered)?;
    match (current.version(), offered.version()) {
        (Some(current), None) => return Err(SnapshotError::VersionMissing { current }),
        (Some(current), Some(offered)) if offered < current => {
            return Err(SnapshotError::VersionRegressed { current, offered })
        }
        _ => {}
    }
    let intent = offered.intent();
    if !intent.allow_drop && !intent.allow_empty && drops_most(current.len(), offered.len()) {
        return Err(SnapshotError::DropsMost {
            current: current.len(),
            offered: offered.len(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::Format;

    fn table(version: Option<u64>, routes: usize, extra: &str) -> Table {
        let mut text = String::from("# test table\n");
        if let Some(v) = version {
            text.push_str(&format!("version = {v}\n"));
        }
        text.push_str(extra);
        text.push('\n');
        for i in 0..routes {
            text.push_str(&format!(
                "[[routes]]\nsni = \"s{i}.example\"\nendpoints = [\"127.0.0.1:{}\"]\n",
                1000 + i
            ));
        }
        Table::parse(&text, Format::Toml).unwrap()
    }

    #[test]
    fn an_empty_table_must_say_so() {
        assert_eq!(
            check_alone(&table(Some(1), 0, "")),
            Err(SnapshotError::NoRoutes)
        );
        assert_eq!(
            check_alone(&table(None, 0, "")),
            Err(SnapshotError::NoRoutes)
        );
        assert_eq!(
            check_alone(&table(Some(1), 0, "allow_empty = true")),
            Ok(())
        );
        assert_eq!(check_alone(&table(None, 1, "")), Ok(()));
        let current = table(Some(1), 3, "");
        assert_eq!(
            check_replacement(&current, &table(Some(2), 0, "")),
            Err(SnapshotError::NoRoutes)
        );
        assert_eq!(
            check_replacement(
                &table(Some(1), 40, ""),
                &table(Some(2), 0, "allow_empty = true")
            ),
            Ok(())
        );
    }

    #[test]
    fn an_empty_text_is_never_a_table() {
        for format in [Format::Toml, Format::Json] {
            assert_eq!(
                Table::parse("\n  ", format),
                Err(SnapshotError::EmptyText { format })
            );
        }
    }

    #[test]
    fn versions_only_go_up_and_never_away() {
        let v9 = table(Some(9), 3, "");
        assert_eq!(
            check_replacement(&v9, &table(None, 3, "")),
            Err(SnapshotError::VersionMissing { current: 9 })
        );
        assert_eq!(
            check_replacement(&v9, &table(Some(8), 3, "")),
            Err(SnapshotError::VersionRegressed {
                current: 9,
                offered: 8
            })
        );
        assert_eq!(check_replacement(&v9, &table(Some(9), 3, "")), Ok(()));
        assert_eq!(check_replacement(&v9, &table(Some(10), 3, "")), Ok(()));
        let unversioned = table(None, 3, "");
        assert_eq!(check_replacement(&unversioned, &table(None, 2, "")), Ok(()));
        assert_eq!(
            check_replacement(&unversioned, &table(Some(1), 2, "")),
            Ok(())
        );
    }

    #[test]
    fn losing_most_routes_must_be_meant() {
        let big = table(Some(1), 20, "");
        assert_eq!(
            check_replacement(&big, &table(Some(2), 9, "")),
            Err(SnapshotError::DropsMost {
                current: 20,
                offered: 9
            })
        );
        assert_eq!(check_replacement(&big, &table(Some(2), 10, "")), Ok(()));
        assert_eq!(
            check_replacement(&big, &table(Some(2), 1, "allow_drop = true")),
            Ok(())
        );
        // Small tables change freely.
        let small = table(Some(1), DROP_GUARD_MIN_ROUTES - 1, "");
        assert_eq!(check_replacement(&small, &table(Some(2), 1, "")), Ok(()));
        assert!(drops_most(10, 4) && !drops_most(10, 5) && !drops_most(9, 0));
    }

    #[test]
    fn messages_name_the_field_and_the_way_out() {
        for (e, field, way_out) in [
            (SnapshotError::NoRoutes, "routes", "allow_empty"),
            (
                SnapshotError::VersionMissing { current: 9 },
                "version",
                "version",
            ),
            (
                SnapshotError::DropsMost {
                    current: 20,
                    offered: 3,
                },
                "routes",
                "allow_drop",
            ),
        ] {
            let text = e.to_string();
            assert!(text.starts_with(field), "{text}");
            assert!(text.contains(way_out), "{text}");
        }
    }
}
