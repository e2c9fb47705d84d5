use wasq_guest::task;

struct Opaque;

#[task]
fn give() -> Opaque {
    Opaque
}

struct NotDisplay;

#[task]
fn fallible() -> Result<u8, NotDisplay> {
    Ok(1)
}

fn main() {}
