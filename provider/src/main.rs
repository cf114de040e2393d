//! The `provider` binary: run the provider on an interface and serve something over it.
mod cli;

fn main() {
    cli::run();
}
