fn main() {
    eprintln!("breakwater-agent: not implemented yet");
    std::process::exit(2);
}
