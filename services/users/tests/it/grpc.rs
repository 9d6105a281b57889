//! `herald.users.v1.UsersService` over a real TCP connection with the generated client.

use herald_core::admin::AdminToken;
use herald_core::id::UserId;
use herald_testing::{TestDb, on_both_stores};
use herald_users::grpc::proto::users_service_client::UsersServiceClient;
use herald_users::grpc::proto::{BatchGetUsersRequest, GetUserRequest};
use tonic::transport::Channel;
use tonic::{Code, Request};

use crate::support::Setup;

on_both_stores!(lookups_over_grpc, calls_without_the_admin_key_are_refused);

const KEY: &str = "users-test-admin-key-0123456789abcdef";

/// Serves the gRPC routes on a free port of 127.0.0.1 and connects a client.
async fn serve(setup: &Setup, token: Option<AdminToken>) -> UsersServiceClient<Channel> {
    let app = herald_users::grpc::routes(setup.state.clone(), token);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let channel = Channel::from_shared(format!("http://{address}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    UsersServiceClient::new(channel)
}

fn with_key<T>(message: T, key: &str) -> Request<T> {
    let mut request = Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {key}").parse().unwrap());
    request
}

async fn lookups_over_grpc(db: TestDb) {
    let setup = Setup::new(&db).await;
    let mut client = serve(&setup, Some(AdminToken::new(KEY.to_owned()).unwrap())).await;
    let id = setup.register("linus@example.com").await;

    let user = client
        .get_user(with_key(GetUserRequest { id: id.to_string() }, KEY))
        .await
        .unwrap()
        .into_inner()
        .user
        .unwrap();
    assert_eq!(user.id, id.to_string());
    assert_eq!(user.email, "linus@example.com");
    assert_eq!(user.version, 1);

    let nobody = UserId::new();
    let err = client
        .get_user(with_key(
            GetUserRequest {
                id: nobody.to_string(),
            },
            KEY,
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    let err = client
        .get_user(with_key(
            GetUserRequest {
                id: "usr_nope".to_owned(),
            },
            KEY,
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("usr_nope"), "{}", err.message());

    let batch = client
        .batch_get_users(with_key(
            BatchGetUsersRequest {
                ids: vec![nobody.to_string(), id.to_string()],
            },
            KEY,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(batch.users.len(), 1);
    assert_eq!(batch.users[0].id, id.to_string());
    assert_eq!(batch.missing, [nobody.to_string()]);

    let err = client
        .batch_get_users(with_key(BatchGetUsersRequest { ids: vec![] }, KEY))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
}

async fn calls_without_the_admin_key_are_refused(db: TestDb) {
    let setup = Setup::new(&db).await;
    let id = setup.register("eve@example.com").await;
    let request = || GetUserRequest { id: id.to_string() };

    let mut client = serve(&setup, Some(AdminToken::new(KEY.to_owned()).unwrap())).await;
    let err = client.get_user(Request::new(request())).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    let wrong = "x".repeat(KEY.len());
    let err = client
        .get_user(with_key(request(), &wrong))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    assert!(!err.message().contains(KEY));

    let mut unconfigured = serve(&setup, None).await;
    let err = unconfigured
        .get_user(with_key(request(), KEY))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    assert!(
        err.message().contains("api.admin_token"),
        "{}",
        err.message()
    );
}
