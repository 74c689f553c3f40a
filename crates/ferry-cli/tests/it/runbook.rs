//! RUNBOOK.md against the alert rules: every alert in `deploy/prometheus/alerts.yml` carries a
//! `runbook_url` naming a section that exists, every link inside the runbook resolves, and
//! every situation the operator's path promises has its section.

use std::collections::BTreeSet;
use std::path::PathBuf;

fn repo_file(rel: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..").join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// GitHub's anchor for a heading: lower case, punctuation dropped, spaces as hyphens.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || matches!(c, ' ' | '-' | '_'))
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

fn sections(runbook: &str) -> BTreeSet<String> {
    runbook.lines().filter_map(|l| l.strip_prefix("## ")).map(slug).collect()
}

/// `(alert name, runbook_url)` for every alert rule; the url is None when the rule has none.
fn alerts(rules: &str) -> Vec<(String, Option<String>)> {
    let mut out: Vec<(String, Option<String>)> = Vec::new();
    for line in rules.lines() {
        let t = line.trim();
        if let Some(name) = t.strip_prefix("- alert:") {
            out.push((name.trim().to_string(), None));
        } else if let Some(url) = t.strip_prefix("runbook_url:") {
            let last = out.last_mut().expect("a runbook_url outside any alert");
            assert!(last.1.is_none(), "{} has two runbook_url annotations", last.0);
            last.1 = Some(url.trim().trim_matches('"').to_string());
        }
    }
    out
}

#[test]
fn every_alert_links_to_a_runbook_section_that_exists() {
    let runbook = repo_file("RUNBOOK.md");
    let have = sections(&runbook);
    let rules = alerts(&repo_file("deploy/prometheus/alerts.yml"));
    assert!(rules.len() >= 12, "the alert rules were not found: {rules:?}");
    for (alert, url) in &rules {
        let url = url.as_deref().unwrap_or_else(|| panic!("alert {alert} has no runbook_url"));
        let anchor = url
            .strip_prefix("RUNBOOK.md#")
            .unwrap_or_else(|| panic!("alert {alert}: runbook_url {url:?} is not RUNBOOK.md#<section>"));
        assert!(have.contains(anchor), "alert {alert}: RUNBOOK.md has no section #{anchor}; it has {have:?}");
    }
}

#[test]
fn every_link_inside_the_runbook_resolves() {
    let runbook = repo_file("RUNBOOK.md");
    let have = sections(&runbook);
    let mut links = 0;
    for part in runbook.split("](#").skip(1) {
        let anchor = part.split(')').next().unwrap();
        assert!(have.contains(anchor), "link to #{anchor} has no section");
        links += 1;
    }
    assert!(links > 5, "links were not found");
}

#[test]
fn every_situation_of_the_operators_path_has_a_section() {
    let have = sections(&repo_file("RUNBOOK.md"));
    for situation in [
        "Disk full",
        "Database in use by another process",
        "PostgreSQL down or failing over",
        "Circuit open",
        "Rate-limited or saturated clients",
        "Stuck or lost workers",
        "A growing DLQ",
        "Advisor verdicts",
        "Migrating and rolling back",
        "Restoring from a backup",
        "Rotating tokens",
        "Upgrading",
    ] {
        assert!(have.contains(&slug(situation)), "no section for {situation:?}");
    }
    // Each section gives the symptom, what it means, and the fix.
    let runbook = repo_file("RUNBOOK.md");
    for section in runbook.split("\n## ").skip(1) {
        let title = section.lines().next().unwrap();
        for part in ["**Symptom.**", "**Means.**", "**Fix"] {
            assert!(section.contains(part), "section {title:?} lacks {part}");
        }
    }
}

#[test]
fn slugs_follow_github() {
    assert_eq!(slug("Agents' dead letters"), "agents-dead-letters");
    assert_eq!(slug("Rate-limited or saturated clients"), "rate-limited-or-saturated-clients");
    assert_eq!(slug("A growing DLQ"), "a-growing-dlq");
}
