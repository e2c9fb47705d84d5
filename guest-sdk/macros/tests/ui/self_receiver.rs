use wasq_guest::task;

struct Counter(u64);

impl Counter {
    #[task]
    fn get(&self) -> u64 {
        self.0
    }
}

fn main() {}
