//! Input generators: wasm-smith modules shaped for the guest ABI, JSON text
//! (well-formed, deeply nested, subtly broken), and byte mutations.
//!
//! Everything is drawn from a seeded [`StdRng`], so a case is reproduced from
//! its seed alone.

use arbitrary::Unstructured;
use rand::rngs::StdRng;
use rand::{Rng, RngCore};

/// The `wasq` imports of ABI v1 with their types (`docs/abi.md`).
const WASQ_IMPORTS: &str = r#"
  (import "wasq" "input_len" (func (result i32)))
  (import "wasq" "input_read" (func (param i32)))
  (import "wasq" "output" (func (param i32 i32)))
  (import "wasq" "fail" (func (param i32 i32)))
  (import "wasq" "log" (func (param i32 i32 i32)))
  (import "wasq" "bad_input" (func (param i32 i32)))
"#;

/// A selection of WASI preview 1 functions with their types: output,
/// clocks, randomness, exit, sleeping, and file calls that must fail.
const WASI_IMPORTS: &str = r#"
  (import "wasi_snapshot_preview1" "fd_write" (func (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_read" (func (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_close" (func (param i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_seek" (func (param i32 i64 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_fdstat_get" (func (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_prestat_get" (func (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "path_open" (func (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "random_get" (func (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "clock_time_get" (func (param i32 i64 i32) (result i32)))
  (import "wasi_snapshot_preview1" "clock_res_get" (func (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "args_sizes_get" (func (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "args_get" (func (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "environ_sizes_get" (func (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "poll_oneoff" (func (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "sched_yield" (func (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func (param i32)))
"#;

/// Imports the sandbox must refuse: a wrong type, an unknown name, a foreign
/// module, a memory, a global.
const WRONG_IMPORTS: &[&str] = &[
    r#"(import "wasq" "output" (func (param i32)))"#,
    r#"(import "wasq" "input_len" (func (result i64)))"#,
    r#"(import "wasq" "spawn" (func))"#,
    r#"(import "env" "abort" (func (param i32)))"#,
    r#"(import "wasi_snapshot_preview1" "fd_write" (func (param i32) (result i32)))"#,
    r#"(import "wasi_snapshot_preview1" "no_such_call" (func))"#,
    r#"(import "wasq" "memory" (memory 1))"#,
    r#"(import "wasq" "g" (global i32))"#,
];

/// Which imports a generated module may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Imports {
    /// None at all.
    None,
    /// The `wasq` functions and WASI, with their right types.
    Wasq,
    /// As [`Imports::Wasq`] plus one the sandbox must refuse.
    Wrong,
    /// Whatever wasm-smith makes up (almost always refused).
    Arbitrary,
}

impl Imports {
    /// Its name in the summary.
    pub fn label(self) -> &'static str {
        match self {
            Imports::None => "no-imports",
            Imports::Wasq => "wasq-imports",
            Imports::Wrong => "wrong-import",
            Imports::Arbitrary => "arbitrary-imports",
        }
    }
}

/// What the generated module is meant to look like, so a case can tell an
/// expected refusal from a surprising one.
#[derive(Debug, Clone)]
pub struct Shape {
    /// Its imports.
    pub imports: Imports,
    /// Only wasm features the sandbox's engine accepts were enabled.
    pub compatible: bool,
    /// A `task.*` export has a type other than `[] -> []`.
    pub bad_task_type: bool,
    /// The exported memory's initial pages.
    pub memory_pages: u32,
    /// The task names it exports.
    pub tasks: Vec<String>,
}

/// A wasm-smith module shaped for the guest ABI: an exported `memory`, one
/// to four `task.*` functions (rarely a wrongly typed one), sometimes
/// `_initialize`, with imports drawn as `imports` says. Random bodies, start
/// functions, tables, globals, data and element segments come from
/// wasm-smith. `None` when wasm-smith cannot build one from the bytes drawn.
pub fn smith_module(rng: &mut StdRng, imports: Imports) -> Option<(Vec<u8>, Shape)> {
    let compatible = rng.random_bool(0.85);
    let memory_pages = match rng.random_range(0..100) {
        0..=1 => rng.random_range(65..200), // over a 4 MiB limit
        2..=30 => 0,
        _ => rng.random_range(1..4),
    };
    let maximum = if rng.random_bool(0.5) {
        format!(" {}", memory_pages + rng.random_range(0..80))
    } else {
        String::new()
    };
    let mut exports = format!("(module (memory (export \"memory\") {memory_pages}{maximum})");
    let n_tasks = rng.random_range(1..=4);
    let mut tasks = Vec::new();
    for i in 0..n_tasks {
        let name = format!("t{i}");
        exports.push_str(&format!("(func (export \"task.{name}\"))"));
        tasks.push(name);
    }
    if rng.random_bool(0.1) {
        exports.push_str("(func (export \"_initialize\"))");
    }
    let bad_task_type = rng.random_bool(0.03);
    if bad_task_type {
        exports.push_str("(func (export \"task.typed\") (param i32) (result i32) local.get 0)");
    }
    exports.push(')');

    let mut config = wasm_smith::Config {
        exports: Some(wat::parse_str(&exports).expect("exports WAT is valid")),
        max_funcs: rng.random_range(1..40),
        max_instructions: rng.random_range(1..400),
        max_globals: rng.random_range(0..10),
        max_tables: rng.random_range(0..6),
        max_table_elements: if rng.random_bool(0.05) {
            rng.random_range(0..2_000_000)
        } else {
            rng.random_range(0..200)
        },
        max_memories: 1,
        // Mostly memories that fit the 4 MiB limit of the fuzz sandboxes.
        max_memory32_bytes: match rng.random_range(0..10) {
            0..=5 => 1 << 20,
            6..=8 => 8 << 20,
            _ => 1 << 32,
        },
        max_data_segments: rng.random_range(0..8),
        max_element_segments: rng.random_range(0..8),
        max_types: rng.random_range(1..40),
        disallow_traps: rng.random_bool(0.3),
        allow_start_export: rng.random_bool(0.5),
        ..wasm_smith::Config::default()
    };
    match imports {
        Imports::None => config.max_imports = 0,
        Imports::Wasq | Imports::Wrong => {
            let mut text = format!("(module {WASQ_IMPORTS}");
            if rng.random_bool(0.7) {
                text.push_str(WASI_IMPORTS);
            }
            if imports == Imports::Wrong {
                text.push_str(WRONG_IMPORTS[rng.random_range(0..WRONG_IMPORTS.len())]);
            }
            text.push(')');
            config.available_imports = Some(wat::parse_str(&text).expect("imports WAT is valid"));
            config.max_imports = rng.random_range(1..30);
        }
        Imports::Arbitrary => config.max_imports = rng.random_range(0..5),
    }
    if compatible {
        // What the sandbox's engine accepts (docs/abi.md): no GC, threads,
        // exceptions, memory64, multi-memory or custom page sizes.
        config.gc_enabled = false;
        config.exceptions_enabled = false;
        config.threads_enabled = false;
        config.shared_everything_threads_enabled = false;
        config.memory64_enabled = false;
        config.custom_page_sizes_enabled = false;
        config.wide_arithmetic_enabled = false;
        config.custom_descriptors_enabled = false;
        // wasm-smith's typed function references (`(ref func)`) need GC
        // types in wasmtime, which this build leaves out: most modules with
        // reference types are refused, so only some have them.
        config.reference_types_enabled = rng.random_bool(0.25);
        // The exported memory is added to those wasm-smith makes up: with
        // none made up, it is the only one.
        config.max_memories = 0;
    } else {
        config.gc_enabled = rng.random_bool(0.5);
        config.exceptions_enabled = rng.random_bool(0.5);
        config.threads_enabled = rng.random_bool(0.5);
        config.memory64_enabled = rng.random_bool(0.3);
        config.custom_page_sizes_enabled = rng.random_bool(0.3);
        config.wide_arithmetic_enabled = rng.random_bool(0.3);
        config.max_memories = rng.random_range(1..3);
    }
    let mut entropy = vec![0u8; rng.random_range(16..12_000)];
    rng.fill_bytes(&mut entropy);
    let mut u = Unstructured::new(&entropy);
    let mut module = wasm_smith::Module::new(config, &mut u).ok()?;
    if rng.random_bool(0.3) {
        // Sometimes bound every loop and call with a counter, so more
        // modules return instead of running out of fuel.
        let _ = module.ensure_termination(rng.random_range(10..10_000));
    }
    let shape = Shape {
        imports,
        compatible,
        bad_task_type,
        memory_pages,
        tasks,
    };
    Some((module.to_bytes(), shape))
}

/// Hand-written modules that follow the ABI, as seeds for mutation.
pub fn seed_modules() -> Vec<Vec<u8>> {
    [ECHO_WAT, KITCHEN_SINK_WAT]
        .iter()
        .map(|t| wat::parse_str(t).expect("seed WAT is valid"))
        .collect()
}

/// `task.echo` returns its input as its result: the args decoding oracle.
pub const ECHO_WAT: &str = r#"
(module
  (import "wasq" "input_len" (func $len (result i32)))
  (import "wasq" "input_read" (func $read (param i32)))
  (import "wasq" "output" (func $out (param i32 i32)))
  (memory (export "memory") 2)
  (func (export "task.echo")
    (call $read (i32.const 0))
    (call $out (i32.const 0) (call $len))))
"#;

/// Most sections a task module can have.
const KITCHEN_SINK_WAT: &str = r#"
(module
  (type $io (func (param i32 i32)))
  (import "wasq" "input_len" (func $len (result i32)))
  (import "wasq" "input_read" (func $read (param i32)))
  (import "wasq" "output" (func $out (type $io)))
  (import "wasq" "fail" (func $fail (type $io)))
  (import "wasq" "log" (func $log (param i32 i32 i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1 4)
  (table 4 funcref)
  (global $calls (mut i32) (i32.const 0))
  (elem (i32.const 0) $ok $bad)
  (data (i32.const 16) "[1,2,3]")
  (data (i32.const 32) "nope")
  (data (i32.const 64) "hello\n")
  (func $init (global.set $calls (i32.const 1)))
  (start $init)
  (func (export "_initialize") (global.set $calls (i32.add (global.get $calls) (i32.const 1))))
  (func $ok (export "task.ok") (call $out (i32.const 16) (i32.const 7)))
  (func $bad (export "task.bad") (call $fail (i32.const 32) (i32.const 4)))
  (func (export "task.log") (call $log (i32.const 2) (i32.const 64) (i32.const 5)))
  (func (export "task.print")
    (i32.store (i32.const 128) (i32.const 64))
    (i32.store (i32.const 132) (i32.const 6))
    (drop (call $fd_write (i32.const 1) (i32.const 128) (i32.const 1) (i32.const 136))))
  (func (export "task.spin") (loop $l (br $l)))
  (func (export "task.grow") (drop (memory.grow (i32.const 100))))
  (func (export "task.indirect") (call_indirect (i32.const 1))))
"#;

/// Random bytes, `0..max` of them.
pub fn bytes(rng: &mut StdRng, max: usize) -> Vec<u8> {
    let mut b = vec![0u8; rng.random_range(0..max)];
    rng.fill_bytes(&mut b);
    b
}

/// Applies one to `max_ops` random mutations: bit flips, byte sets,
/// interesting values (LEB128 edges), inserts, deletes, duplicated ranges,
/// truncation, and splices from `donor`.
pub fn mutate(rng: &mut StdRng, data: &mut Vec<u8>, max_ops: usize, donor: &[u8]) {
    const INTERESTING: &[u8] = &[0x00, 0x01, 0x7f, 0x80, 0xff, 0x40, 0x60, 0x0b, 0x41, 0xfc];
    for _ in 0..rng.random_range(1..=max_ops) {
        let len = data.len();
        match rng.random_range(0..9) {
            0 if len > 0 => {
                let i = rng.random_range(0..len);
                data[i] ^= 1 << rng.random_range(0..8);
            }
            1 if len > 0 => {
                let i = rng.random_range(0..len);
                data[i] = rng.random();
            }
            2 if len > 0 => {
                let i = rng.random_range(0..len);
                data[i] = INTERESTING[rng.random_range(0..INTERESTING.len())];
            }
            3 => {
                let i = rng.random_range(0..=len);
                let n = rng.random_range(1..16);
                let ins: Vec<u8> = (0..n).map(|_| rng.random()).collect();
                data.splice(i..i, ins);
            }
            4 if len > 0 => {
                let i = rng.random_range(0..len);
                let n = rng.random_range(1..=(len - i).min(64));
                data.drain(i..i + n);
            }
            5 if len > 1 => {
                let i = rng.random_range(0..len);
                let n = rng.random_range(1..=(len - i).min(64));
                let copy = data[i..i + n].to_vec();
                let at = rng.random_range(0..=len);
                data.splice(at..at, copy);
            }
            6 if len > 8 => data.truncate(rng.random_range(8..len)),
            7 if !donor.is_empty() => {
                let i = rng.random_range(0..donor.len());
                let n = rng.random_range(1..=(donor.len() - i).min(256));
                let at = rng.random_range(0..=len);
                data.splice(at..at, donor[i..i + n].iter().copied());
            }
            _ if len > 0 => {
                // A multi-byte LEB128 where one byte was.
                let i = rng.random_range(0..len);
                let leb = [0xff, 0xff, 0xff, 0xff, 0x0f];
                let n = rng.random_range(1..=leb.len());
                data.splice(i..=i, leb[..n].iter().copied());
            }
            _ => data.push(rng.random()),
        }
    }
}

/// JSON text of a random value nested at most `depth` deep, with the
/// awkward parts of JSON: escapes, surrogates, huge and tiny numbers,
/// duplicate keys, odd whitespace.
pub fn json(rng: &mut StdRng, depth: u32) -> String {
    let mut out = String::new();
    json_into(rng, depth, &mut out);
    out
}

fn ws(rng: &mut StdRng, out: &mut String) {
    if rng.random_bool(0.1) {
        for _ in 0..rng.random_range(1..4) {
            out.push([' ', '\n', '\t', '\r'][rng.random_range(0..4)]);
        }
    }
}

fn json_into(rng: &mut StdRng, depth: u32, out: &mut String) {
    ws(rng, out);
    let pick = if depth == 0 {
        rng.random_range(0..6)
    } else {
        rng.random_range(0..9)
    };
    match pick {
        0 => out.push_str(["null", "true", "false"][rng.random_range(0..3)]),
        1 => out.push_str(&rng.random::<i64>().to_string()),
        2 => out.push_str(
            [
                "0",
                "-0",
                "1e400",
                "-1e400",
                "1e-400",
                "18446744073709551616",
                "-9223372036854775809",
                "123456789012345678901234567890",
                "0.1",
                "2.5e-3",
                "1E+2",
            ][rng.random_range(0..11)],
        ),
        3 => out.push_str(&format!("{}", rng.random::<f64>() * 1e6)),
        4 | 5 => string(rng, out),
        6 | 7 => {
            out.push('[');
            let n = rng.random_range(0..5);
            for i in 0..n {
                if i > 0 {
                    out.push(',');
                }
                json_into(rng, depth - 1, out);
            }
            ws(rng, out);
            out.push(']');
        }
        _ => {
            out.push('{');
            let n = rng.random_range(0..4);
            for i in 0..n {
                if i > 0 {
                    out.push(',');
                }
                ws(rng, out);
                if rng.random_bool(0.3) {
                    out.push_str("\"k\"");
                } else {
                    string(rng, out);
                }
                ws(rng, out);
                out.push(':');
                json_into(rng, depth - 1, out);
            }
            ws(rng, out);
            out.push('}');
        }
    }
    ws(rng, out);
}

fn string(rng: &mut StdRng, out: &mut String) {
    const PIECES: &[&str] = &[
        "a",
        "task",
        " ",
        "\\\"",
        "\\\\",
        "\\n",
        "\\u0000",
        "\\u001b[31m",
        "\\ud83d\\ude00",
        "\\ud800",
        "\\udc00x",
        "é",
        "😀",
        "\u{202e}",
        "\\/",
    ];
    out.push('"');
    for _ in 0..rng.random_range(0..6) {
        out.push_str(PIECES[rng.random_range(0..PIECES.len())]);
    }
    out.push('"');
}

/// Arrays and objects nested exactly `depth` deep around a scalar.
pub fn nested(rng: &mut StdRng, depth: usize) -> String {
    let mut open = String::new();
    let mut close = Vec::new();
    for _ in 0..depth {
        if rng.random_bool(0.7) {
            open.push('[');
            close.push(']');
        } else {
            open.push_str("{\"a\":");
            close.push('}');
        }
    }
    open.push('1');
    open.extend(close.into_iter().rev());
    open
}

/// A random array as call args: usually well-formed, sometimes deep.
pub fn args(rng: &mut StdRng) -> String {
    match rng.random_range(0..10) {
        0 => {
            let depth = rng.random_range(0..140);
            format!("[{}]", nested(rng, depth))
        }
        1 => "[]".to_string(),
        _ => {
            let n = rng.random_range(0..4);
            let items: Vec<String> = (0..n).map(|_| json(rng, 3)).collect();
            format!("[{}]", items.join(","))
        }
    }
}
