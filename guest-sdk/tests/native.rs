//! `#[task]` functions are plain Rust natively: callable, testable, and the glue
//! beside them type-checks without being exported.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use wasq_guest::task;

#[task]
fn add(x: i64, y: i64) -> i64 {
    x + y
}

#[task(name = "renamed")]
fn original_name(text: String, times: Option<usize>) -> String {
    text.repeat(times.unwrap_or(1))
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Point {
    x: f64,
    y: f64,
}

#[task]
fn norm(p: Point) -> Result<f64, String> {
    let n = (p.x * p.x + p.y * p.y).sqrt();
    if n.is_finite() {
        Ok(n)
    } else {
        Err("overflow".into())
    }
}

#[task]
fn io_result(path: String) -> std::io::Result<Vec<u8>> {
    std::fs::read(path)
}

#[task]
fn unit(mut counter: u32, _unused: Option<bool>) {
    counter += 1;
    let _ = counter;
}

#[task]
#[allow(clippy::unused_unit)]
fn explicit_unit() -> () {}

#[task]
fn returns_impl() -> impl Serialize {
    BTreeMap::from([("a", 1)])
}

#[task]
#[allow(clippy::empty_loop)]
fn never() -> ! {
    loop {}
}

#[task]
fn r#type(r#in: Vec<u8>) -> usize {
    r#in.len()
}

macro_rules! task_from_macro {
    ($name:ident, $ty:ty) => {
        #[task]
        fn $name(value: $ty) -> $ty {
            value
        }
    };
}
task_from_macro!(identity, Option<String>);

mod nested {
    use wasq_guest::task;

    #[task]
    pub fn in_module(value: serde_json::Value) -> serde_json::Value {
        value
    }
}

#[test]
fn tasks_are_callable_as_plain_rust() {
    assert_eq!(add(2, 3), 5);
    assert_eq!(original_name("ab".into(), Some(2)), "abab");
    assert_eq!(original_name("ab".into(), None), "ab");
    assert_eq!(norm(Point { x: 3.0, y: 4.0 }), Ok(5.0));
    assert!(io_result("/definitely/not/here".into()).is_err());
    unit(1, None);
    explicit_unit();
    assert_eq!(
        serde_json::to_string(&returns_impl()).unwrap(),
        r#"{"a":1}"#
    );
    assert_eq!(r#type(vec![1, 2]), 2);
    assert_eq!(identity(Some("x".into())), Some("x".into()));
    assert_eq!(
        nested::in_module(serde_json::json!([1])),
        serde_json::json!([1])
    );
    let _: fn() -> ! = never;
}

#[test]
fn tasks_can_be_called_inside_a_function_body() {
    #[task]
    fn local(x: u8) -> u8 {
        x * 2
    }
    assert_eq!(local(21), 42);
}
