//! The repository's documents: every relative link in a tracked `*.md` file
//! names a file or directory that ships in the repository (and, for a
//! `#fragment` into a markdown file, one of its headings); a path to a
//! markdown file written as inline code exists too; and no document speaks
//! of how the software was developed ("issue 8", "sandbox") instead of what
//! it is and how it was measured.
//!
//! Files come from `git ls-files` at the workspace root, or, where git or
//! the repository is missing, from a walk of the tree (without `target/`).

use std::collections::HashMap;
use std::fs;
use std::path::{Component, Path, PathBuf};
use std::process::Command;

/// The workspace root: the parent of this crate's directory, or
/// `MESHGATE_DOCS_ROOT` when set (to check another copy of the tree).
fn root() -> PathBuf {
    if let Some(dir) = std::env::var_os("MESHGATE_DOCS_ROOT") {
        return PathBuf::from(dir);
    }
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the dataplane crate sits inside the workspace")
        .to_path_buf()
}

#[test]
fn documents_link_only_to_what_ships_and_describe_the_software() {
    let root = root();
    let docs = markdown_files(&root);
    assert!(
        docs.iter().any(|p| p == Path::new("README.md")),
        "README.md not among the documents found under {}: {docs:?}",
        root.display()
    );
    let report = check(&root, &docs);
    assert!(
        report.problems.is_empty(),
        "{} problem(s) in the documents:\n{}",
        report.problems.len(),
        report.problems.join("\n")
    );
    assert!(
        report.links > 10,
        "only {} relative links found in {} documents: the link parser is broken",
        report.links,
        docs.len()
    );
}

/// The checker itself, on a small tree with one of each fault and the
/// constructs that must pass (code blocks, external links, anchors).
#[test]
fn checker_reports_each_kind_of_fault() {
    let dir = std::env::temp_dir().join(format!("meshgate-docs-test-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(dir.join("sub")).unwrap();
    fs::write(dir.join("present.rs"), "").unwrap();
    fs::write(
        dir.join("sub/guide.md"),
        "# Guide\n\n## The gateway's Proxy.Config options\n\n## Pipe size (`--pipe-size`)\n\n## Twice\n\n## Twice\n",
    )
    .unwrap();
    fs::write(
        dir.join("A.md"),
        concat!(
            "# A\n",
            "[ok](present.rs) [ok dir](sub) [ok anchor](sub/guide.md#the-gateways-proxyconfig-options)\n",
            "[ok anchor 2](sub/guide.md#pipe-size---pipe-size) [dup](sub/guide.md#twice-1) [self](#a)\n",
            "[web](https://example.com/missing.md) ![img](present.rs \"title\")\n",
            "[ref]: sub/guide.md\n",
            "```sh\n[not a link](nowhere.md) issue 9 in a block still counts\n```\n",
            "[broken](missing.rs) and [bad anchor](sub/guide.md#nope) and [escape](../outside.md)\n",
            "See `shared/reference/gone.md` and `sub/guide.md`.\n",
            "Built in the sandbox for Issue #12.\n",
            "<img src=\"gone.svg\">\n",
        ),
    )
    .unwrap();
    let report = check(
        &dir,
        &[PathBuf::from("A.md"), PathBuf::from("sub/guide.md")],
    );
    let _ = fs::remove_dir_all(&dir);
    let joined = report.problems.join("\n");
    for expected in [
        "A.md:7: issue number",
        "A.md:9: link to missing.rs",
        "A.md:9: link to sub/guide.md#nope: no heading",
        "A.md:9: link to ../outside.md: outside the repository",
        "A.md:10: `shared/reference/gone.md`",
        "A.md:11: \"sandbox\"",
        "A.md:11: issue number",
        "A.md:12: link to gone.svg",
    ] {
        assert!(
            joined.contains(expected),
            "expected a problem containing {expected:?}, got:\n{joined}"
        );
    }
    assert_eq!(
        report.problems.len(),
        8,
        "unexpected problems reported:\n{joined}"
    );
    assert_eq!(report.links, 12, "links counted in the sample");
}

struct Report {
    /// Relative links checked.
    links: usize,
    /// One line per problem: `file:line: what`.
    problems: Vec<String>,
}

/// Tracked markdown files, relative to `root`.
fn markdown_files(root: &Path) -> Vec<PathBuf> {
    let git = Command::new("git")
        .args(["ls-files", "-z", "--", "*.md"])
        .current_dir(root)
        .output();
    if let Ok(out) = git {
        if out.status.success() && !out.stdout.is_empty() {
            return out
                .stdout
                .split(|&b| b == 0)
                .filter(|s| !s.is_empty())
                .map(|s| PathBuf::from(String::from_utf8_lossy(s).into_owned()))
                .filter(|p| root.join(p).is_file())
                .collect();
        }
    }
    let mut found = Vec::new();
    walk(root, root, &mut found);
    found
}

fn walk(root: &Path, dir: &Path, found: &mut Vec<PathBuf>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if path.is_dir() {
            if !matches!(name.as_ref(), "target" | ".git" | "node_modules") {
                walk(root, &path, found);
            }
        } else if name.ends_with(".md") {
            found.push(path.strip_prefix(root).unwrap_or(&path).to_path_buf());
        }
    }
}

fn check(root: &Path, docs: &[PathBuf]) -> Report {
    let mut report = Report {
        links: 0,
        problems: Vec::new(),
    };
    let mut anchors: HashMap<PathBuf, Vec<String>> = HashMap::new();
    for doc in docs {
        let text = match fs::read_to_string(root.join(doc)) {
            Ok(t) => t,
            Err(e) => {
                report
                    .problems
                    .push(format!("{}: cannot read: {e}", doc.display()));
                continue;
            }
        };
        let dir = doc.parent().unwrap_or(Path::new(""));
        let mut in_fence = false;
        for (i, line) in text.lines().enumerate() {
            let at = format!("{}:{}", doc.display(), i + 1);
            for word in forbidden_words(line) {
                report.problems.push(format!("{at}: {word}: describe the software and how it was measured, not how it was developed"));
            }
            let trimmed = line.trim_start();
            if trimmed.starts_with("```") || trimmed.starts_with("~~~") {
                in_fence = !in_fence;
                continue;
            }
            if in_fence {
                continue;
            }
            let (prose, spans) = split_code_spans(line);
            for span in spans {
                if looks_like_md_path(&span)
                    && !root.join(dir).join(&span).exists()
                    && !root.join(&span).exists()
                {
                    report.problems.push(format!(
                        "{at}: `{span}` names a document that is not in the repository"
                    ));
                }
            }
            for target in link_targets(&prose) {
                if target.contains("://") || target.starts_with("mailto:") {
                    continue;
                }
                report.links += 1;
                if let Some(problem) = check_target(root, doc, dir, &target, &mut anchors) {
                    report
                        .problems
                        .push(format!("{at}: link to {target}: {problem}"));
                }
            }
        }
    }
    report
}

/// What is wrong with one relative link target, if anything.
fn check_target(
    root: &Path,
    doc: &Path,
    dir: &Path,
    target: &str,
    anchors: &mut HashMap<PathBuf, Vec<String>>,
) -> Option<String> {
    let (path, fragment) = match target.split_once('#') {
        Some((p, f)) => (p, Some(f)),
        None => (target, None),
    };
    let path = path.replace("%20", " ");
    let file = if path.is_empty() {
        doc.to_path_buf()
    } else {
        match normalize(&dir.join(&path)) {
            Some(p) => p,
            None => return Some("outside the repository".into()),
        }
    };
    let full = root.join(&file);
    if !full.exists() {
        return Some("no such file in the repository".into());
    }
    let fragment = fragment.filter(|f| !f.is_empty())?;
    if file.extension().and_then(|e| e.to_str()) != Some("md") {
        return None;
    }
    let slugs = anchors
        .entry(file.clone())
        .or_insert_with(|| heading_slugs(&fs::read_to_string(&full).unwrap_or_default()));
    if slugs.iter().any(|s| s == fragment) {
        None
    } else {
        Some(format!(
            "no heading with the anchor #{fragment} in {}",
            file.display()
        ))
    }
}

/// `path` with `.` and `..` resolved lexically; `None` if it climbs out.
fn normalize(path: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for part in path.components() {
        match part {
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    return None;
                }
            }
            Component::Normal(p) => out.push(p),
            Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

/// The line with inline code spans blanked out, and the spans' contents.
fn split_code_spans(line: &str) -> (String, Vec<String>) {
    let mut prose = String::with_capacity(line.len());
    let mut spans = Vec::new();
    let mut rest = line;
    while let Some(start) = rest.find('`') {
        prose.push_str(&rest[..start]);
        let ticks = rest[start..].chars().take_while(|&c| c == '`').count();
        let after = &rest[start + ticks..];
        let fence = "`".repeat(ticks);
        match after.find(&fence) {
            Some(end) => {
                spans.push(after[..end].trim().to_string());
                prose.push(' ');
                rest = &after[end + ticks..];
            }
            None => {
                prose.push_str(&rest[start..]);
                rest = "";
            }
        }
    }
    prose.push_str(rest);
    (prose, spans)
}

/// A relative path to a markdown file, as written in inline code.
fn looks_like_md_path(span: &str) -> bool {
    span.ends_with(".md")
        && span.len() > 3
        && !span.contains(['*', ' ', '<', '$', '{'])
        && !span.contains("://")
}

/// Targets of `[text](target)`, `![alt](target)`, `[label]: target`, and
/// HTML `src="..."` / `href="..."` on one line of prose.
fn link_targets(prose: &str) -> Vec<String> {
    let mut targets = Vec::new();
    let trimmed = prose.trim_start();
    if trimmed.starts_with('[') {
        if let Some(close) = trimmed.find("]:") {
            if !trimmed[..close].contains("](") {
                if let Some(t) = trimmed[close + 2..].split_whitespace().next() {
                    targets.push(t.trim_matches(['<', '>']).to_string());
                }
                return targets;
            }
        }
    }
    let mut rest = prose;
    while let Some(pos) = rest.find("](") {
        let after = &rest[pos + 2..];
        let target: String = if let Some(angled) = after.strip_prefix('<') {
            angled.split('>').next().unwrap_or("").to_string()
        } else {
            let mut depth = 0usize;
            after
                .chars()
                .take_while(|&c| match c {
                    '(' => {
                        depth += 1;
                        true
                    }
                    ')' if depth == 0 => false,
                    ')' => {
                        depth -= 1;
                        true
                    }
                    c => !c.is_whitespace(),
                })
                .collect()
        };
        if !target.is_empty() {
            targets.push(target);
        }
        rest = after;
    }
    for attr in ["src=\"", "href=\""] {
        let mut rest = prose;
        while let Some(pos) = rest.find(attr) {
            let after = &rest[pos + attr.len()..];
            if let Some(end) = after.find('"') {
                targets.push(after[..end].to_string());
            }
            rest = after;
        }
    }
    targets
}

/// GitHub's anchors for the headings of a markdown text: lower case, only
/// letters, digits, `-` and `_` kept, spaces to `-`, repeats suffixed `-1`,
/// `-2`, ...
fn heading_slugs(text: &str) -> Vec<String> {
    let mut slugs: Vec<String> = Vec::new();
    let mut in_fence = false;
    for line in text.lines() {
        let trimmed = line.trim_start();
        if trimmed.starts_with("```") || trimmed.starts_with("~~~") {
            in_fence = !in_fence;
            continue;
        }
        if in_fence || !line.starts_with('#') {
            continue;
        }
        let title = line.trim_start_matches('#');
        if !title.starts_with(' ') {
            continue;
        }
        let base: String = title
            .trim()
            .trim_end_matches('#')
            .trim()
            .to_lowercase()
            .chars()
            .filter_map(|c| match c {
                ' ' => Some('-'),
                c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
                _ => None,
            })
            .collect();
        let mut slug = base.clone();
        let mut n = 0;
        while slugs.contains(&slug) {
            n += 1;
            slug = format!("{base}-{n}");
        }
        slugs.push(slug);
    }
    slugs
}

/// Words that describe the development rather than the software: "sandbox"
/// and an issue number ("issue 8", "Issue #12", "issues 4").
fn forbidden_words(line: &str) -> Vec<&'static str> {
    let lower = line.to_lowercase();
    let mut found = Vec::new();
    if lower.contains("sandbox") {
        found.push("\"sandbox\"");
    }
    let bytes = lower.as_bytes();
    let mut from = 0;
    while let Some(pos) = lower[from..].find("issue") {
        let start = from + pos;
        from = start + 5;
        if start > 0 && bytes[start - 1].is_ascii_alphanumeric() {
            continue;
        }
        let mut i = start + 5;
        if bytes.get(i) == Some(&b's') {
            i += 1;
        }
        if bytes.get(i) == Some(&b' ') {
            i += 1;
        }
        if bytes.get(i) == Some(&b'#') {
            i += 1;
        }
        if bytes.get(i).is_some_and(u8::is_ascii_digit) {
            found.push("issue number");
            break;
        }
    }
    found
}
