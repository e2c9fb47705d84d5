use wasq_guest::task;

#[task]
fn tuple((a, b): (i64, i64)) -> i64 {
    a + b
}

#[task]
fn wildcard(_: u8) {}

#[task]
fn by_ref(ref x: u8) -> u8 {
    *x
}

#[task]
fn slice([first, ..]: [u8; 4]) -> u8 {
    first
}

fn main() {}
