use wasq_guest::task;

#[task]
fn shout(text: &str) -> String {
    text.to_uppercase()
}

#[task]
fn total(values: &[u64]) -> u64 {
    values.iter().sum()
}

#[task]
fn show(value: impl std::fmt::Display) -> String {
    value.to_string()
}

fn main() {}
