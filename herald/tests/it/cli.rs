//! The command line itself: version, help, usage errors.

use crate::support::herald;

#[test]
fn version_prints_the_crate_version() {
    let output = herald().arg("version").output().unwrap();
    assert!(output.status.success());
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        format!("herald {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn help_lists_every_subcommand() {
    let output = herald().arg("--help").output().unwrap();
    assert!(output.status.success());
    let help = String::from_utf8_lossy(&output.stdout);
    for command in ["dev", "serve", "migrate", "version"] {
        assert!(
            help.contains(&format!("  {command} ")),
            "{command} missing from:\n{help}"
        );
    }
}

#[test]
fn a_bad_flag_value_is_a_usage_error_naming_the_flag() {
    let output = herald()
        .args(["dev", "--http", "localhost"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--http <ADDR>"), "{stderr}");
}
