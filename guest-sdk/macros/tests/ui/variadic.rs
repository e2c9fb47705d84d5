use wasq_guest::task;

#[task]
fn sum(n: i32, rest: ...) -> i32 {
    n
}

fn main() {}
