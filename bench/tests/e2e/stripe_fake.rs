//! A recording Stripe stand-in on loopback for what `localstripe` lacks (the Prices API,
//! Connect accounts and onboarding links, and the `Stripe-Account` header): it records every
//! request (method, path, form fields, `Stripe-Account`, `Idempotency-Key`), replays answers
//! for a repeated idempotency key as Stripe does, and can be told to lose its answers, to rate-limit, or
//! to stop and start again on the same port.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::SystemTime,
};

use poem::{
    EndpointExt, Request, Response, Route, handler,
    http::StatusCode,
    listener::{Acceptor, Listener, TcpListener},
    web::Data,
};
use serde_json::{Value, json};
use tokio::sync::oneshot;

/// One request as received.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub form: HashMap<String, String>,
    pub account: Option<String>,
    pub idempotency_key: Option<String>,
    /// The answer was a replay of an earlier one with the same idempotency key.
    pub replayed: bool,
    pub status: u16,
    /// Unix milliseconds.
    pub at_ms: u128,
}

#[derive(Default)]
struct State {
    requests: Vec<Recorded>,
    objects: HashMap<String, Value>,
    replies: HashMap<(Option<String>, String), (u16, Value)>,
    next: u64,
    /// Do the work, then answer 500 anyway (the answer is lost), this many times.
    fail_after: u32,
    /// Answer 429, this many times.
    rate_limited: u32,
}

#[derive(Clone, Default)]
struct Shared(Arc<Mutex<State>>);

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

pub struct StripeFake {
    pub port: u16,
    shared: Shared,
    stop: Option<oneshot::Sender<()>>,
}

fn error(status: StatusCode, kind: &str, message: &str) -> (u16, Value) {
    (
        status.as_u16(),
        json!({ "error": { "type": kind, "message": message } }),
    )
}

fn parse_form(body: &[u8]) -> HashMap<String, String> {
    url::form_urlencoded::parse(body)
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The work itself: the status and body Stripe would answer.
fn handle(
    state: &mut State,
    method: &str,
    path: &str,
    form: &HashMap<String, String>,
) -> (u16, Value) {
    let mut new_id = |prefix: &str| {
        state.next += 1;
        format!("{prefix}_fake{:06}", state.next)
    };
    let segments: Vec<&str> = path.trim_start_matches("/v1/").split('/').collect();
    match (method, segments.as_slice()) {
        ("POST", ["products"]) => {
            let id = new_id("prod");
            let obj = json!({
                "id": id, "object": "product", "name": form.get("name"),
                "active": form.get("active").map(|a| a == "true").unwrap_or(true),
                "description": form.get("description"),
            });
            state.objects.insert(id, obj.clone());
            (200, obj)
        }
        ("POST", ["prices"]) => {
            let product = form.get("product").cloned().unwrap_or_default();
            if !state.objects.contains_key(&product) {
                return error(
                    StatusCode::BAD_REQUEST,
                    "invalid_request_error",
                    "No such product",
                );
            }
            let id = new_id("price");
            let obj = json!({ "id": id, "object": "price", "product": product, "active": true });
            state.objects.insert(id, obj.clone());
            (200, obj)
        }
        ("POST", ["products", id]) | ("POST", ["prices", id]) => {
            let Some(obj) = state.objects.get_mut(*id) else {
                return error(
                    StatusCode::NOT_FOUND,
                    "invalid_request_error",
                    "No such object",
                );
            };
            for (k, v) in form {
                if k == "active" {
                    obj["active"] = json!(v == "true");
                } else if !k.contains('[') {
                    obj[k.as_str()] = json!(v);
                }
            }
            (200, obj.clone())
        }
        // A customer's update (its sync again, when it changed after being created).
        ("POST", ["customers", id]) => {
            let Some(obj) = state.objects.get_mut(*id) else {
                return error(
                    StatusCode::NOT_FOUND,
                    "invalid_request_error",
                    "No such customer",
                );
            };
            if let Some(name) = form.get("name") {
                obj["name"] = json!(name);
            }
            (200, obj.clone())
        }
        ("POST", ["customers"]) => {
            let id = new_id("cus");
            let obj = json!({ "id": id, "object": "customer", "name": form.get("name") });
            state.objects.insert(id, obj.clone());
            (200, obj)
        }
        // Payment methods made by Stripe.js on the account: `pm_fake_card…` are Mastercards;
        // `pm_fake_card_taken…` are attached to another Stripe customer already.
        ("GET", ["payment_methods", id]) if id.starts_with("pm_fake_card") => (
            200,
            json!({ "id": id, "object": "payment_method", "type": "card",
                    "customer": id.starts_with("pm_fake_card_taken").then_some("cus_someone_else"),
                    "card": { "brand": "mastercard", "last4": "4444",
                              "exp_month": 7, "exp_year": 2031 } }),
        ),
        ("GET", ["payment_methods", _]) => error(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            "No such PaymentMethod",
        ),
        ("POST", ["payment_methods", id, "attach"]) => (
            200,
            json!({ "id": id, "object": "payment_method", "customer": form.get("customer") }),
        ),
        ("POST", ["payment_methods", id, "detach"]) => (
            200,
            json!({ "id": id, "object": "payment_method", "customer": null }),
        ),
        ("POST", ["payment_intents"]) => {
            // A soft decline code, but the issuer advises never to try again.
            if form.get("payment_method").map(String::as_str) == Some("pm_card_doNotTryAgain") {
                return (
                    402,
                    json!({ "error": { "type": "card_error", "code": "card_declined",
                                       "decline_code": "insufficient_funds",
                                       "advice_code": "do_not_try_again",
                                       "message": "Your card was declined." } }),
                );
            }
            if form.get("payment_method").map(String::as_str) == Some("pm_card_chargeDeclined") {
                return (
                    402,
                    json!({ "error": { "type": "card_error", "code": "card_declined",
                                       "decline_code": "insufficient_funds",
                                       "message": "Your card has insufficient funds." } }),
                );
            }
            let id = new_id("pi");
            let obj = json!({ "id": id, "object": "payment_intent", "status": "succeeded",
                              "amount": form.get("amount") });
            state.objects.insert(id, obj.clone());
            (200, obj)
        }
        ("POST", ["accounts"]) => {
            let id = new_id("acct");
            let obj = json!({
                "id": id, "object": "account", "type": form.get("type"),
                "email": form.get("email"), "details_submitted": false,
                "charges_enabled": false, "payouts_enabled": false,
                "requirements": {"currently_due": ["external_account", "tos_acceptance.date"]},
            });
            state.objects.insert(id, obj.clone());
            (200, obj)
        }
        ("POST", ["account_links"]) => {
            let account = form.get("account").cloned().unwrap_or_default();
            if !state.objects.contains_key(&account) {
                return error(
                    StatusCode::BAD_REQUEST,
                    "invalid_request_error",
                    "No such account",
                );
            }
            (
                200,
                json!({
                    "object": "account_link",
                    "url": format!("https://connect.stripe.test/setup/{account}"),
                    "created": now_secs(),
                    "expires_at": now_secs() + 300,
                }),
            )
        }
        ("GET", ["accounts", id]) => match state.objects.get(*id) {
            Some(obj) => (200, obj.clone()),
            None => error(
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                "No such account",
            ),
        },
        _ => error(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            "Unrecognized request URL",
        ),
    }
}

#[handler]
async fn endpoint(req: &Request, body: Vec<u8>, shared: Data<&Shared>) -> Response {
    let method = req.method().as_str().to_owned();
    let path = req.uri().path().to_owned();
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let account = header("stripe-account");
    let idempotency_key = header("idempotency-key");
    let form = parse_form(&body);
    let mut state = shared.lock();
    let at_ms = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    let replay = idempotency_key
        .as_ref()
        .and_then(|k| state.replies.get(&(account.clone(), k.clone())).cloned());
    let (status, answer, replayed) = if let Some((status, body)) = replay {
        (status, body, true)
    } else if state.rate_limited > 0 {
        state.rate_limited -= 1;
        let (s, b) = error(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limit_error",
            "Too many requests",
        );
        (s, b, false)
    } else {
        let (s, b) = handle(&mut state, &method, &path, &form);
        if let Some(k) = &idempotency_key {
            state
                .replies
                .insert((account.clone(), k.clone()), (s, b.clone()));
        }
        if state.fail_after > 0 && s == 200 {
            state.fail_after -= 1;
            let (s, b) = error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "api_error",
                "Lost answer",
            );
            (s, b, false)
        } else {
            (s, b, false)
        }
    };
    state.requests.push(Recorded {
        method,
        path,
        form,
        account,
        idempotency_key,
        replayed,
        status,
        at_ms,
    });
    Response::builder()
        .status(StatusCode::from_u16(status).unwrap_or(StatusCode::OK))
        .content_type("application/json")
        .body(answer.to_string())
}

impl StripeFake {
    pub async fn start() -> StripeFake {
        let mut fake = StripeFake {
            port: 0,
            shared: Shared::default(),
            stop: None,
        };
        fake.serve().await;
        fake
    }

    async fn serve(&mut self) {
        let acceptor = TcpListener::bind(format!("127.0.0.1:{}", self.port))
            .into_acceptor()
            .await
            .expect("bind the Stripe stand-in");
        self.port = acceptor
            .local_addr()
            .first()
            .and_then(|a| a.as_socket_addr().copied())
            .expect("address")
            .port();
        let (tx, rx) = oneshot::channel::<()>();
        let app = Route::new()
            .at("/*path", endpoint)
            .data(self.shared.clone());
        tokio::spawn(
            poem::Server::new_with_acceptor(acceptor).run_with_graceful_shutdown(
                app,
                async move {
                    let _ = rx.await;
                },
                Some(std::time::Duration::from_millis(100)),
            ),
        );
        self.stop = Some(tx);
    }

    /// The base URL to configure as `STRIPE_API_BASE`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/", self.port)
    }

    /// Stops answering (connections are refused) until [`Self::restart`].
    pub async fn stop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        // Let the listener close.
        for _ in 0..50 {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    pub async fn restart(&mut self) {
        self.serve().await;
    }

    pub fn fail_after(&self, n: u32) {
        self.shared.lock().fail_after = n;
    }

    pub fn rate_limit(&self, n: u32) {
        self.shared.lock().rate_limited = n;
    }

    /// The tenant finished onboarding at Stripe.
    pub fn complete_onboarding(&self, account: &str) {
        if let Some(a) = self.shared.lock().objects.get_mut(account) {
            a["details_submitted"] = json!(true);
            a["charges_enabled"] = json!(true);
            a["requirements"] = json!({"currently_due": []});
            a["payouts_enabled"] = json!(true);
        }
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.shared.lock().requests.clone()
    }

    /// Requests with this method and path that Stripe carried out (not replays, not failures).
    pub fn done(&self, method: &str, path: &str) -> Vec<Recorded> {
        self.requests()
            .into_iter()
            .filter(|r| r.method == method && r.path == path && r.status == 200 && !r.replayed)
            .collect()
    }

    /// Objects Stripe holds whose id starts with the prefix.
    pub fn objects(&self, prefix: &str) -> usize {
        self.shared
            .lock()
            .objects
            .keys()
            .filter(|k| k.starts_with(prefix))
            .count()
    }
}
