//! HTTP Basic and X-Auth-Token sessions (SessionService).

use super::*;

// ---- authentication ----------------------------------------------------------------------------

fn is_public(method: &Method, path: &str) -> bool {
    matches!(
        path,
        "/redfish" | "/redfish/" | "/redfish/v1" | "/redfish/v1/" | "/redfish/v1/odata"
    ) || (method == Method::POST && path == SESSIONS)
}

pub(super) async fn authenticate(State(app): Shared, req: Request, next: Next) -> Response {
    if is_public(req.method(), req.uri().path()) || app.authorized(req.headers()) {
        return next.run(req).await;
    }
    let mut resp = RfError::new(
        StatusCode::UNAUTHORIZED,
        "NoValidSession",
        "authentication required: HTTP Basic or an X-Auth-Token from SessionService/Sessions",
    )
    .into_response();
    resp.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Basic realm=\"rackshare-vbmc\""),
    );
    resp
}

/// Equal-time comparison, so a wrong password's timing says nothing about the right one.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |d, (x, y)| d | (x ^ y)) == 0
}

impl App {
    pub(super) fn authorized(&self, headers: &HeaderMap) -> bool {
        if let Some(token) = headers.get("x-auth-token").and_then(|v| v.to_str().ok()) {
            let mut sessions = self.lock_sessions();
            if let Some(s) = sessions.get_mut(token) {
                s.last_used = Instant::now();
                return true;
            }
            return false;
        }
        let Some(basic) = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Basic "))
        else {
            return false;
        };
        let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(basic.trim()) else {
            return false;
        };
        let Ok(pair) = String::from_utf8(decoded) else {
            return false;
        };
        match pair.split_once(':') {
            Some((u, p)) => self.credentials_match(u, p),
            None => false,
        }
    }

    pub(super) fn credentials_match(&self, user: &str, password: &str) -> bool {
        // Both compared, always, so the time does not tell which one was wrong.
        same(user, &self.user) & same(password, &self.password)
    }

    pub(super) fn lock_sessions(&self) -> std::sync::MutexGuard<'_, HashMap<String, Session>> {
        let mut s = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        s.retain(|_, v| v.last_used.elapsed() < SESSION_TIMEOUT);
        s
    }

    pub(super) fn system_path(&self) -> String {
        format!("{ROOT}/Systems/{}", self.machine.spec.name)
    }

    /// 404 unless `id` is this vBMC's System.
    pub(super) fn check_system(&self, id: &str) -> Result<String, RfError> {
        if id == self.machine.spec.name {
            Ok(self.system_path())
        } else {
            Err(RfError::new(
                StatusCode::NOT_FOUND,
                "ResourceMissingAtURI",
                format!("no System {id}"),
            ))
        }
    }
}

pub(super) async fn login(State(app): Shared, body: Bytes) -> RfResult {
    let b = body_object(&body)?;
    let (Some(user), Some(password)) = (
        b.get("UserName").and_then(Value::as_str),
        b.get("Password").and_then(Value::as_str),
    ) else {
        return Err(RfError::bad(
            "PropertyMissing",
            "UserName and Password are required",
        ));
    };
    if !app.credentials_match(user, password) {
        return Err(RfError::new(
            StatusCode::UNAUTHORIZED,
            "NoValidSession",
            "wrong user name or password",
        ));
    }
    let token = hex::encode(rand::random::<[u8; 24]>());
    let id = hex::encode(rand::random::<[u8; 8]>());
    {
        let mut sessions = app.lock_sessions();
        while sessions.len() >= MAX_SESSIONS {
            let oldest = sessions
                .iter()
                .min_by_key(|(_, s)| s.last_used)
                .map(|(k, _)| k.clone());
            match oldest {
                Some(k) => sessions.remove(&k),
                None => break,
            };
        }
        sessions.insert(
            token.clone(),
            Session {
                id: id.clone(),
                user: user.to_string(),
                last_used: Instant::now(),
            },
        );
    }
    let location = format!("{SESSIONS}/{id}");
    let mut resp = (StatusCode::CREATED, Json(session_json(&id, user))).into_response();
    let h = resp.headers_mut();
    if let (Ok(t), Ok(l)) = (
        HeaderValue::from_str(&token),
        HeaderValue::from_str(&location),
    ) {
        h.insert("X-Auth-Token", t);
        h.insert(header::LOCATION, l);
    }
    Ok(resp)
}

fn session_json(id: &str, user: &str) -> Value {
    json!({
        "@odata.id": format!("{SESSIONS}/{id}"),
        "@odata.type": "#Session.v1_3_0.Session",
        "Id": id,
        "Name": "User session",
        "UserName": user,
    })
}

pub(super) async fn session(State(app): Shared, Path(sid): Path<String>) -> RfResult {
    let sessions = app.lock_sessions();
    match sessions.values().find(|s| s.id == sid) {
        Some(s) => ok(session_json(&s.id, &s.user)),
        None => Err(RfError::new(
            StatusCode::NOT_FOUND,
            "ResourceMissingAtURI",
            format!("no session {sid}"),
        )),
    }
}

pub(super) async fn logout(State(app): Shared, Path(sid): Path<String>) -> RfResult {
    let mut sessions = app.lock_sessions();
    let before = sessions.len();
    sessions.retain(|_, s| s.id != sid);
    if sessions.len() == before {
        return Err(RfError::new(
            StatusCode::NOT_FOUND,
            "ResourceMissingAtURI",
            format!("no session {sid}"),
        ));
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

pub(super) async fn sessions(State(app): Shared) -> RfResult {
    let ids: Vec<String> = app
        .lock_sessions()
        .values()
        .map(|s| format!("{SESSIONS}/{}", s.id))
        .collect();
    ok(collection(SESSIONS, "SessionCollection", "Sessions", &ids))
}

pub(super) async fn session_service() -> RfResult {
    ok(json!({
        "@odata.id": "/redfish/v1/SessionService",
        "@odata.type": "#SessionService.v1_1_8.SessionService",
        "Id": "SessionService",
        "Name": "Session Service",
        "ServiceEnabled": true,
        "SessionTimeout": SESSION_TIMEOUT.as_secs(),
        "Sessions": { "@odata.id": SESSIONS },
    }))
}
