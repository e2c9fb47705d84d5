use wasq_guest::task;

#[task(name = "1st")]
fn first() {}

#[task(name = "my-task")]
fn dashed() {}

#[task(name = "")]
fn empty() {}

#[task]
fn café() {}

fn main() {}
