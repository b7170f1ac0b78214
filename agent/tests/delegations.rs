//! Delegated targets are searched as spec 5.6.7 says: delegated roles are fetched lazily
//! (not by refresh), in pre-order depth-first order of the delegations, only where the
//! delegation's paths or hash prefixes match the target, never twice, and a matching
//! terminating delegation ends the search. A role is trusted only for the paths its
//! delegation gives it, and the first role in that order that lists the target wins.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{assert_failure, assert_success, delegated_role, md, Client, Repo, Server};
use otter_agent::tuf::UpdateError;
use otter_keys::hash::sha256_hex;

/// A distinct key per role name.
fn seed(role: &str) -> u8 {
    100 + role.bytes().fold(0u8, |a, b| a.wrapping_add(b)) % 100
}

/// One delegation: parent, role, terminating, paths.
type Edge<'a> = (&'a str, &'a str, bool, &'a [&'a str]);

/// A repository with these delegations and targets (role, path, content), every role
/// published; top-level targets at v2, every delegated role at v1, snapshot v2.
fn repo_with(edges: &[Edge], targets: &[(&str, &str, &[u8])]) -> Repo {
    let mut repo = Repo::new();
    for (parent, role, terminating, paths) in edges {
        let r = delegated_role(role, &[seed(role)], 1, *terminating, Some(paths), None);
        repo.delegate_role(parent, r, &[seed(role)]);
    }
    for (role, path, content) in targets {
        repo.add_target(role, path, content);
    }
    let delegated: Vec<String> = repo
        .targets
        .keys()
        .filter(|r| *r != "targets")
        .cloned()
        .collect();
    for role in delegated {
        repo.publish_targets(&role);
    }
    repo.release(&["targets"]);
    repo
}

/// The delegated roles a search for `target` requested, in order (after the four
/// top-level requests of the refresh), and the outcome.
fn search(repo: &Repo, target: &str) -> (Vec<String>, bool) {
    let server = Server::serve(repo);
    let client = Client::new(repo);
    let out = client.cli_download(&server, &[target]);
    let found = out.status.code() == Some(0);
    if !found {
        assert_failure(&out, "is not listed in any trusted targets metadata");
    }
    let log = server.take_log();
    assert_eq!(
        log[..4],
        md(&[
            "2.root.json",
            "timestamp.json",
            "2.snapshot.json",
            "2.targets.json"
        ])[..]
    );
    let roles = log[4..]
        .iter()
        .filter_map(|p| p.strip_prefix("/metadata/1."))
        .map(|p| p.trim_end_matches(".json").to_string())
        .collect();
    (roles, found)
}

#[test]
fn delegated_roles_are_visited_in_pre_order_depth_first_order() {
    let all: &[&str] = &["*"];
    let cases: Vec<(&str, Vec<Edge>, Vec<&str>)> = vec![
        ("one role", vec![("targets", "A", false, all)], vec!["A"]),
        (
            "siblings in listed order",
            vec![("targets", "B", false, all), ("targets", "A", false, all)],
            vec!["B", "A"],
        ),
        (
            "children before the next sibling",
            vec![
                ("targets", "A", false, all),
                ("targets", "B", false, all),
                ("A", "C", false, all),
                ("A", "D", false, all),
            ],
            vec!["A", "C", "D", "B"],
        ),
        (
            "grandchildren before the next sibling",
            vec![
                ("targets", "A", false, all),
                ("targets", "B", false, all),
                ("A", "C", false, all),
                ("C", "D", false, all),
            ],
            vec!["A", "C", "D", "B"],
        ),
        (
            "a cycle is walked once",
            vec![
                ("targets", "A", false, all),
                ("A", "B", false, all),
                ("B", "A", false, all),
                ("B", "C", false, all),
            ],
            vec!["A", "B", "C"],
        ),
        (
            "a role reached twice is visited at its first place",
            vec![
                ("targets", "A", false, all),
                ("targets", "B", false, all),
                ("A", "C", false, all),
                ("B", "C", false, all),
            ],
            vec!["A", "C", "B"],
        ),
    ];
    for (name, edges, expected) in cases {
        let repo = repo_with(&edges, &[]);
        let (visited, found) = search(&repo, "missing.bin");
        assert!(!found, "{name}");
        assert_eq!(visited, expected, "{name}");
    }
}

#[test]
fn a_matching_terminating_delegation_ends_the_search() {
    let all: &[&str] = &["*"];
    let cases: Vec<(&str, Vec<Edge>, Vec<&str>)> = vec![
        (
            "terminating child: no later sibling, no uncle",
            vec![
                ("targets", "A", false, all),
                ("targets", "B", false, all),
                ("A", "C", true, all),
                ("A", "D", false, all),
            ],
            vec!["A", "C"],
        ),
        (
            "the terminating role's own children are still searched",
            vec![
                ("targets", "A", false, all),
                ("targets", "B", false, all),
                ("A", "C", true, all),
                ("C", "D", false, all),
            ],
            vec!["A", "C", "D"],
        ),
        (
            "a terminating role that does not match ends nothing",
            vec![
                ("targets", "A", true, &["other/*"]),
                ("targets", "B", false, all),
            ],
            vec!["B"],
        ),
    ];
    for (name, edges, expected) in cases {
        let repo = repo_with(&edges, &[]);
        let (visited, found) = search(&repo, "missing.bin");
        assert!(!found, "{name}");
        assert_eq!(visited, expected, "{name}");
    }

    // A target that a role after the terminating one lists is not found.
    let repo = repo_with(
        &[
            ("targets", "A", true, &["firmware/*"]),
            ("targets", "B", false, &["firmware/*"]),
        ],
        &[("B", "firmware/pos.bin", b"listed by B")],
    );
    let (visited, found) = search(&repo, "firmware/pos.bin");
    assert!(!found);
    assert_eq!(visited, ["A"]);
}

/// Targets: `targets` delegates `*.cfg` to `config` and `firmware/*/*` to `firmware`,
/// which delegates `firmware/pos/*` to `pos` and `firmware/pinpad/*.bin` to `pinpad`.
fn tree() -> Repo {
    repo_with(
        &[
            ("targets", "config", false, &["*.cfg"]),
            ("targets", "firmware", false, &["firmware/*/*"]),
            ("firmware", "pos", false, &["firmware/pos/*"]),
            ("firmware", "pinpad", false, &["firmware/pinpad/*.bin"]),
        ],
        &[
            ("targets", "readme.txt", b"top-level"),
            ("config", "store.cfg", b"config by config"),
            ("pos", "firmware/pos/2.4.1.bin", b"pos firmware by pos"),
            (
                "pinpad",
                "firmware/pinpad/1.0.bin",
                b"pinpad firmware by pinpad",
            ),
            // pinpad is not trusted for .img files, nor pos for pinpad paths.
            (
                "pinpad",
                "firmware/pinpad/evil.img",
                b"outside pinpad's paths",
            ),
            ("pos", "firmware/pinpad/2.0.bin", b"outside pos's paths"),
        ],
    )
}

#[test]
fn only_roles_whose_paths_match_are_searched() {
    let repo = tree();
    let cases: [(&str, bool, &[&str]); 7] = [
        ("readme.txt", true, &[]),
        ("store.cfg", true, &["config"]),
        // `*` does not cross `/`: no role is delegated `shop/store.cfg`.
        ("shop/store.cfg", false, &[]),
        ("firmware/pos/2.4.1.bin", true, &["firmware", "pos"]),
        ("firmware/pinpad/1.0.bin", true, &["firmware", "pinpad"]),
        ("firmware/pinpad/evil.img", false, &["firmware"]),
        ("firmware/pinpad/2.0.bin", false, &["firmware", "pinpad"]),
    ];
    for (target, should_find, expected) in cases {
        let (visited, found) = search(&repo, target);
        assert_eq!(found, should_find, "{target}");
        assert_eq!(visited, expected, "{target}");
    }
}

#[test]
fn a_role_is_not_trusted_for_targets_outside_its_paths() {
    let repo = tree();
    let server = Server::serve(&repo);
    let client = Client::new(&repo);

    // pos signed an entry for a pinpad path: the entry is never consulted, even once pos's
    // metadata is trusted and stored.
    assert_success(&client.cli_download(&server, &["firmware/pos/2.4.1.bin"]));
    assert!(client.metadata_names().contains(&"pos.json".to_string()));
    server.take_log();
    let out = client.cli_download(&server, &["firmware/pinpad/2.0.bin"]);
    assert_failure(
        &out,
        "\"firmware/pinpad/2.0.bin\" is not listed in any trusted targets metadata",
    );
    assert!(server.log().iter().all(|p| !p.starts_with("/targets/")));
    assert_eq!(client.target_files().len(), 1);

    let err = client
        .download(&server, "firmware/pinpad/evil.img")
        .unwrap_err();
    assert!(matches!(&err, UpdateError::UnknownTarget(t) if t == "firmware/pinpad/evil.img"));
    assert_eq!(client.target_files().len(), 1);
}

#[test]
fn hash_prefixes_select_the_roles_searched() {
    let target = "firmware/pos.bin";
    let digest = sha256_hex(target.as_bytes());
    let other = if digest.starts_with('0') { "1" } else { "0" };
    let mut repo = Repo::new();
    for (role, prefix) in [("bin-other", other), ("bin-match", &digest[..2])] {
        let r = delegated_role(role, &[seed(role)], 1, false, None, Some(&[prefix]));
        repo.delegate_role("targets", r, &[seed(role)]);
    }
    repo.add_target("bin-match", target, b"found by hash prefix");
    repo.add_target("bin-other", target, b"never consulted");
    repo.publish_targets("bin-match");
    repo.publish_targets("bin-other");
    repo.release(&["targets"]);

    let (visited, found) = search(&repo, target);
    assert!(found);
    assert_eq!(visited, ["bin-match"]);
}

#[test]
fn the_first_role_in_search_order_that_lists_a_target_wins() {
    let all: &[&str] = &["*"];
    let repo = repo_with(
        &[("targets", "A", false, all), ("targets", "B", false, all)],
        &[("A", "pos.bin", b"from A"), ("B", "pos.bin", b"from B")],
    );
    let server = Server::serve(&repo);
    let client = Client::new(&repo);
    assert_success(&client.cli_download(&server, &["pos.bin"]));
    let stored: Vec<Vec<u8>> = client.target_files().into_values().collect();
    assert_eq!(stored, vec![b"from A".to_vec()]);
    assert!(!server.log().contains(&"/metadata/1.B.json".to_string()));

    // The top-level role comes before every delegated one.
    let mut repo = repo_with(
        &[("targets", "A", false, all)],
        &[("A", "pos.bin", b"from A")],
    );
    repo.add_target("targets", "pos.bin", b"from targets");
    repo.release(&["targets"]);
    let server = Server::serve(&repo);
    let client = Client::new(&repo);
    assert_success(&client.cli_download(&server, &["pos.bin"]));
    let stored: Vec<Vec<u8>> = client.target_files().into_values().collect();
    assert_eq!(stored, vec![b"from targets".to_vec()]);
    assert!(!server.log().contains(&"/metadata/1.A.json".to_string()));
}

#[test]
fn refresh_fetches_no_delegated_role() {
    let repo = tree();
    let server = Server::serve(&repo);
    let client = Client::new(&repo);
    assert_success(&client.cli_refresh(&server));
    assert_eq!(
        server.log(),
        md(&[
            "2.root.json",
            "timestamp.json",
            "2.snapshot.json",
            "2.targets.json"
        ])
    );
    assert_eq!(
        client.metadata_names(),
        [
            "root.json",
            "snapshot.json",
            "targets.json",
            "timestamp.json"
        ]
    );
}

#[test]
fn the_search_visits_at_most_max_delegations_roles() {
    let all: &[&str] = &["*"];
    // A chain targets -> R1 -> R2 -> R3 -> R4, the target in R4.
    let repo = repo_with(
        &[
            ("targets", "R1", false, all),
            ("R1", "R2", false, all),
            ("R2", "R3", false, all),
            ("R3", "R4", false, all),
        ],
        &[("R4", "deep.bin", b"deep")],
    );
    let server = Server::serve(&repo);
    let client = Client::new(&repo);
    let mut cfg = Client::config(&server);
    cfg.max_delegations = 2;
    let mut updater = client
        .updater_with(cfg, otter_keys::time::UtcTime::now())
        .unwrap();
    updater.refresh().unwrap();
    server.take_log();
    let err = updater.find_target("deep.bin").unwrap_err();
    assert!(matches!(&err, UpdateError::UnknownTarget(_)), "{err:?}");
    assert_eq!(server.take_log(), md(&["1.R1.json", "1.R2.json"]));

    // With the default cap it is found.
    assert_success(&client.cli_download(&server, &["deep.bin"]));
}
