//! A few hundred fuzz cases under `cargo test`, so the driver cannot rot:
//! every target runs, with a fixed seed, and nothing breaks a rule.

use wasq_fuzz::{Options, Target};

#[test]
fn a_few_hundred_cases_of_every_target_are_clean() {
    let options = Options {
        targets: Target::ALL.to_vec(),
        // A cap, not the usual stop: the case count ends each target first
        // on any machine that runs the tests in time.
        seconds: 25.0,
        cases: Some(250),
        seed: 15,
        verbose: true,
    };
    let report = wasq_fuzz::run(&options).expect("the fuzz sandboxes build");
    let summary = report.summary();
    println!("{summary}");
    assert!(report.clean(), "fuzz findings:\n{summary}");
    for t in &report.targets {
        assert!(t.cases > 0, "target {} ran no case", t.target.name());
    }
    assert!(report.cases() >= 400, "only {} cases ran", report.cases());
    // The generator still makes modules the sandbox loads and runs.
    let sandbox = &report.targets[0];
    let runs: u64 = sandbox
        .outcomes
        .iter()
        .filter(|(label, _)| label.starts_with("run:"))
        .map(|(_, n)| n)
        .sum();
    assert!(runs >= 25, "only {runs} generated modules ran:\n{summary}");
}
