fn main() {
    std::process::exit(syn::cli::main());
}
