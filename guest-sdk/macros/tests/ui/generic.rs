use wasq_guest::task;

#[task]
fn first<T: Clone>(items: Vec<T>) -> T {
    items[0].clone()
}

#[task]
fn with_lifetime<'a>(x: u8) -> u8 {
    x
}

#[task]
fn with_where(x: u8) -> u8
where
    u8: Copy,
{
    x
}

fn main() {}
