use wasq_guest::task;

#[task]
async fn fetch(url: String) -> String {
    url
}

fn main() {}
