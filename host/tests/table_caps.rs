//! Tables past the host's caps are refused before compiling, alike on quick
//! and optimised code: a module with five tables must not load as quick
//! code and fail each call as a guest `trap` while optimised compilation
//! refuses it as `invalid_module`.

use wasq_broker::ErrorKind;
use wasq_host::{Compilation, Sandbox, SandboxConfig, inspect};

fn sandbox(compilation: Compilation) -> Sandbox {
    Sandbox::new(SandboxConfig {
        pool_size: 4,
        compilation,
        ..SandboxConfig::default()
    })
    .unwrap()
}

fn module(tables: &str) -> Vec<u8> {
    wat::parse_str(format!(
        r#"(module {tables} (memory (export "memory") 1) (func (export "task.t")))"#
    ))
    .unwrap()
}

#[tokio::test]
async fn too_many_or_too_large_tables_are_refused_before_compiling() {
    let cases = [
        (
            module(&"(table 1 funcref)".repeat(5)),
            ErrorKind::InvalidModule,
            "5 tables",
        ),
        (
            module("(table 1000001 funcref)"),
            ErrorKind::MemoryLimit,
            "table of 1000001 elements",
        ),
    ];
    let quick = sandbox(Compilation::Quick);
    let optimized = sandbox(Compilation::Optimized);
    for (bytes, kind, says) in cases {
        let e = inspect(&bytes, quick.config()).unwrap_err();
        assert_eq!(e.kind, kind, "{e}");
        assert!(e.message.contains(says), "{e}");
        for s in [&quick, &optimized] {
            let e = s.load_bytes(bytes.clone()).await.unwrap_err();
            assert_eq!(e.kind, kind, "{e}");
        }
    }
    // Four tables at the limit still load and run on both tiers.
    let four = module(&"(table 1 funcref)".repeat(4));
    for s in [&quick, &optimized] {
        let m = s.load_bytes(four.clone()).await.unwrap();
        let out = s
            .run(&m, "t", b"[]", s.limits(), &wasq_host::Cancel::new())
            .await;
        assert!(out.result.is_ok(), "{:?}", out.result);
    }
}
