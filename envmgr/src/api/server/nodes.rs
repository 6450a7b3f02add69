//! `DELETE /v1/nodes/{name}`: an operator removes a dead node's records
//! from the cluster store at once (409 while it is alive, 404 when the
//! store has nothing of it, 409 on a node without a cluster store).

use axum::extract::State;
use axum::Json;

use super::error::ApiResult;
use super::extract::NamePath;
use super::handlers::AppState;
use crate::kernel::Kernel;
use crate::registry::RemovedNode;

/// Removes node `name`'s records; answers what was removed.
pub(super) async fn remove_node<K: Kernel>(
    State(s): State<AppState<K>>,
    NamePath(name): NamePath,
) -> ApiResult<Json<RemovedNode>> {
    Ok(Json(s.mgr.remove_node(&name).await?))
}
