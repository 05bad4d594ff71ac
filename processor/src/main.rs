fn main() {
    eprintln!("breakwater-processor: not implemented yet");
    std::process::exit(2);
}
