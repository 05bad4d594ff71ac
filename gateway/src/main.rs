fn main() {
    eprintln!("breakwater-gateway: not implemented yet");
    std::process::exit(2);
}
