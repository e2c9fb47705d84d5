use wasq_guest::task;

struct Opaque;

#[task]
fn take(value: Opaque) -> u8 {
    let _ = value;
    1
}

fn main() {}
