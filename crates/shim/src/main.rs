//! `containerd-shim-firebuild-v2`: containerd starts it per container
//! (runtime type `io.containerd.firebuild.v2`).

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    firebuild_shim::run().await;
}
