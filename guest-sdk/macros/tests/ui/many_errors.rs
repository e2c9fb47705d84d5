use wasq_guest::task;

// Every mistake is reported in one build.
#[task(name = "no good")]
async unsafe fn bad<T>((a, b): (T, T), c: &str) {
    let _ = (a, b, c);
}

fn main() {}
