//! The seam to the network layer. The caller (CNI) sets the network up and
//! hands the runtime a [`crate::NetworkAttachment`]; the runtime starts the
//! VMM inside its namespace, records it in the run metadata, and calls a
//! [`NetworkReleaser`] when the VM is removed (`purge`, `--rm`).

use async_trait::async_trait;

use crate::spec::NetworkAttachment;
use crate::state::RunMetadata;

/// Error type of network hooks: the network layer's own error, boxed.
pub type NetworkError = Box<dyn std::error::Error + Send + Sync>;

/// Tears down what the network layer set up for a VM (CNI DEL, namespace
/// removal). Called only once the VM no longer runs; must be idempotent,
/// because a failed purge is retried by the next one.
#[async_trait]
pub trait NetworkReleaser: Send + Sync {
    async fn release(
        &self,
        vm: &RunMetadata,
        attachment: &NetworkAttachment,
    ) -> Result<(), NetworkError>;
}
