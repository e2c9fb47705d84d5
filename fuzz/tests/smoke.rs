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
        cases: Some(100),
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
    assert!(report.cases() >= 200, "only {} cases ran", report.cases());
}
