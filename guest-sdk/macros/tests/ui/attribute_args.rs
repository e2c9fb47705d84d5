use wasq_guest::task;

#[task(retries = 3)]
fn unknown() {}

#[task(name)]
fn no_value() {}

#[task(name = 5)]
fn not_a_string() {}

#[task(name = "a", name = "b")]
fn duplicate() {}

#[task("add")]
fn positional() {}

fn main() {}
