use wasq_guest::task;

#[task]
struct Add;

fn main() {}
