//! The OpenAPI 3.1 document served at `/api/v1/openapi.json`, built from one table of
//! operations. `api/tests` checks that every operation listed here is routed.

use serde_json::{json, Map, Value};

/// One documented operation: method, path, summary, who may call it, request schema, response schema.
pub struct Operation {
    /// Lowercase HTTP method.
    pub method: &'static str,
    /// Path under the server root.
    pub path: &'static str,
    /// What it does.
    pub summary: &'static str,
    /// Which roles may call it.
    pub roles: &'static str,
    /// Request body schema name, if any.
    pub body: Option<&'static str>,
    /// Success response schema (a name, `[Name]` for an array, or None for no body).
    pub response: Option<&'static str>,
}

macro_rules! op {
    ($m:literal, $p:literal, $s:literal, $r:literal, $b:expr, $resp:expr) => {
        Operation {
            method: $m,
            path: $p,
            summary: $s,
            roles: $r,
            body: $b,
            response: $resp,
        }
    };
}

impl Operation {
    /// Whether the operation is served on the boot listeners (boot files on the plain one, the
    /// agent's endpoints on the HTTPS one) rather than on the member API: the split
    /// `routes::boot_router` and `routes::agent_router` make.
    pub fn on_boot_listener(&self) -> bool {
        self.path.starts_with("/boot/") || self.path.starts_with("/api/v1/agent/")
    }

    /// The listener that serves the operation: `boot`, `metrics` (`--metrics-listen`,
    /// `routes::metrics_router`) or `member`.
    pub fn listener(&self) -> &'static str {
        if self.on_boot_listener() {
            "boot"
        } else if self.path == "/metrics" {
            "metrics"
        } else {
            "member"
        }
    }
}

/// Every operation of the API.
pub const OPERATIONS: &[Operation] = &[
    op!("get", "/healthz", "Liveness and database reachability", "anyone", None, Some("Status")),
    op!("get", "/metrics", "Prometheus metrics (text format), on the metrics listener only (--metrics-listen, loopback by default)", "anyone", None, None),
    op!("get", "/boot/{file}", "HTTP boot: MAC.ipxe renders the machine's iPXE script; other names are files of the boot root (Range supported)", "anyone (machines on the boot network)", None, None),
    op!("get", "/api/v1/openapi.json", "This document", "anyone", None, None),
    op!("get", "/api/v1/whoami", "The caller's identity", "any role", None, Some("TokenOwner")),
    op!("get", "/api/v1/sites", "List sites", "any role", None, Some("[Site]")),
    op!("get", "/api/v1/instances", "The rackshare instances on this database: site, version, last heartbeat, alive, the jobs and leader roles each holds; and the sites no live instance serves", "admin, staff, technician", None, Some("Instances")),
    op!("post", "/api/v1/sites", "Add a site", "admin, staff", Some("NewSite"), Some("Site")),
    op!("get", "/api/v1/racks", "List racks (?site=)", "any role", None, Some("[Rack]")),
    op!("post", "/api/v1/racks", "Add a rack", "admin, staff", Some("NewRack"), Some("Rack")),
    op!("get", "/api/v1/machines", "List machines (?state=&arch=&tag=&site=&rack=&group=&min_ram_mib=&min_cpus=&mac=), by name; pages with ?limit=N (at most 1000) and ?after=NAME, the X-Next-Cursor header naming the next page's after; members see their group's", "any role", None, Some("[Machine]")),
    op!("post", "/api/v1/machines", "Enrol a machine", "admin, staff", Some("NewMachine"), Some("Machine")),
    op!("get", "/api/v1/machines/{name}", "Show a machine", "any role (members: own group's)", None, Some("Machine")),
    op!("patch", "/api/v1/machines/{name}", "Edit a machine", "admin, staff", Some("MachinePatch"), Some("Machine")),
    op!("delete", "/api/v1/machines/{name}", "Delete a machine not in use", "admin, staff", None, None),
    op!("post", "/api/v1/machines/{name}/state", "Move a machine along its lifecycle (compare-and-set)", "admin, staff", Some("StateChange"), Some("Machine")),
    op!("get", "/api/v1/machines/{name}/power", "Read the power state from the BMC", "any role (members: own group's)", None, Some("PowerStatus")),
    op!("post", "/api/v1/machines/{name}/power", "Power on, off, soft, cycle or reset; waits for the state (audited)", "admin, staff, technician, member (own)", Some("PowerRequest"), Some("PowerStatus")),
    op!("get", "/api/v1/machines/{name}/power/reading", "Current power draw (W) and energy so far (Wh)", "any role (members: own group's)", None, Some("PowerReading")),
    op!("post", "/api/v1/machines/{name}/bootdev", "Set the next (or every) boot device (audited)", "admin, staff, technician, member (own)", Some("BootRequest"), None),
    op!("get", "/api/v1/machines/{name}/console", "The serial console as a WebSocket (binary frames: bytes; text: JSON take/give/control/closed/error); bearer token or web session + ?csrf= (audited)", "admin, staff, technician, member (own, while leased)", None, None),
    op!("post", "/api/v1/machines/{name}/bmc/check", "Log in to the machine's BMC and read its power state, model and serial; changes nothing (audited; a failure says what to fix)", "admin, staff, technician", None, Some("BmcCheck")),
    op!("post", "/api/v1/machines/{name}/inspect", "Read hardware facts from the BMC into the inventory", "admin, staff, technician", None, Some("InspectResult")),
    op!("get", "/api/v1/images", "List images (members: public and their group's)", "any role", None, Some("[Image]")),
    op!("post", "/api/v1/images", "Upload an image as the raw body (?name=&version=&arch=&format=&sha256=&group=); streamed, hashed, verified", "any role (members: for their group)", None, Some("Image")),
    op!("post", "/api/v1/images/import", "Have the server download an image from an http(s) URL", "any role (members: for their group)", Some("ImageImport"), Some("Image")),
    op!("get", "/api/v1/images/{reference}", "Show an image (NAME or NAME:VERSION)", "any role (members: public and own)", None, Some("Image")),
    op!("delete", "/api/v1/images/{reference}", "Delete an image not used by a pending job", "admin, staff; members: own group's", None, None),
    op!("get", "/api/v1/images/{reference}/content", "Download the bytes (Range supported); an instance lacking them fetches them once from one that holds them", "any role (members: public and own)", None, None),
    op!("post", "/api/v1/images/{reference}/prefetch", "Ask a site's instances to fetch the image's bytes now (body {\"site\": S}); progress in the image's copies", "admin, staff, technician; members: own group's images", None, None),
    op!("get", "/api/v1/peer/blobs/{sha256}", "Another instance fetches a blob (Range supported); signed with the instances' shared key", "an instance (signed request)", None, None),
    op!("post", "/api/v1/jobs", "Start a job on a machine: reimage (with an image and optional cloud-init user data), inspect or wipe", "reimage: any role (members: own machines, public or own images); inspect, wipe: admin, staff, technician", Some("JobRequest"), Some("Job")),
    op!("get", "/api/v1/jobs", "List jobs, newest first (?machine=&state=&kind=&limit=&after=ID: the page after the job ID)", "any role (members: their group's)", None, Some("[Job]")),
    op!("get", "/api/v1/jobs/{id}", "Show a job with its steps and the agent's progress", "any role (members: their group's)", None, Some("Job")),
    op!("get", "/api/v1/jobs/{id}/events", "A job's log (?after=ID to follow)", "any role (members: their group's)", None, Some("[JobEvent]")),
    op!("get", "/api/v1/jobs/{id}/console", "What the machine's serial console printed while the job ran (the newest 256 KiB, kept whether or not anyone watched): the last lines as text, ANSI stripped (?lines=N), or the bytes as they came (?raw=true)", "any role (members: their group's, while the job's lease holds the machine)", None, Some("JobConsole")),
    op!("post", "/api/v1/jobs/{id}/cancel", "Cancel a job (a queued one at once, a running one at its next check); the machine goes failed", "as for starting it", None, Some("Job")),
    op!("post", "/api/v1/agent/claim", "The deploy agent exchanges its one-time boot token for its task and a session (docs/agent-protocol.md)", "the agent (one-time token)", None, None),
    op!("get", "/api/v1/agent/image", "The agent downloads its job's image (Range supported)", "the agent (session token)", None, None),
    op!("post", "/api/v1/agent/progress", "The agent reports progress", "the agent (session token)", None, None),
    op!("post", "/api/v1/agent/challenge", "The agent asks which ranges of its disks to read back after a deploy or wipe; the server chooses them (docs/agent-protocol.md)", "the agent (session token)", None, None),
    op!("post", "/api/v1/agent/result", "The agent reports its result", "the agent (session token)", None, None),
    op!("get", "/api/v1/groups", "List member groups", "any role (members: own)", None, Some("[MemberGroup]")),
    op!("post", "/api/v1/groups", "Add a member group", "admin, staff", Some("NewGroup"), Some("MemberGroup")),
    op!("get", "/api/v1/groups/{name}", "Show a member group", "any role (members: own)", None, Some("MemberGroup")),
    op!("patch", "/api/v1/groups/{name}", "Set quotas and SSH keys", "admin, staff", Some("GroupPatch"), Some("MemberGroup")),
    op!("post", "/api/v1/leases", "Ask for machines: now (allocated in one transaction), at a future start (a reservation) or when capacity frees up (wait_for_capacity). Refusals name the constraint or quota and the numbers", "admin, staff, member (own group)", Some("NewLease"), Some("Lease")),
    op!("get", "/api/v1/leases", "List leases, newest first (?group=&state=&limit=&after=ID: the page after the lease ID); members see their group's", "any role", None, Some("[Lease]")),
    op!("get", "/api/v1/leases/{id}", "Show a lease with its energy (kWh) and wipe certificates", "any role (members: own group's)", None, Some("LeaseDetail")),
    op!("get", "/api/v1/leases/{id}/console-log", "The lease's console recording as raw bytes (text/plain; ?machine= one machine's; the newest 16 MiB per lease; audited)", "admin, staff, technician, member (own group, while the lease is active)", None, None),
    op!("post", "/api/v1/leases/{id}/extend", "Move the end later, within quotas, the maximum lease length and the calendar", "admin, staff, member (own group)", Some("LeaseExtend"), Some("Lease")),
    op!("get", "/api/v1/certificates", "The wipe certificates the caller may read, newest first, each with whether its signature verifies here", "any role (members: own group's)", None, None),
    op!("get", "/api/v1/certificates/{id}", "Download a signed wipe certificate (verify it with `rackshare certificate verify`)", "any role (members: own group's)", None, None),
    op!("get", "/api/v1/trust/key", "The public key that signs wipe certificates, and every key that signed here before", "any role", None, None),
    op!("post", "/api/v1/leases/{id}/release", "Hand the machines back early (or cancel a pending lease); each is wiped", "admin, staff, member (own group)", Some("LeaseEnd"), Some("Lease")),
    op!("post", "/api/v1/leases/{id}/revoke", "Take a lease back; each machine is wiped", "admin, staff", Some("LeaseEnd"), Some("Lease")),
    op!("get", "/api/v1/lease-pool/held-back", "Machines of the pool that allocation skips (BMC failing, last wipe not succeeded), with why", "admin, staff", None, Some("[HeldBackMachine]")),
    op!("get", "/api/v1/reports/usage", "Usage and energy per group for a month (?month=YYYY-MM&group=): machine-hours used and booked, kWh from BMC counters and estimated from power readings, leases, wipes", "admin, staff, member (own group)", None, Some("[GroupUsage]")),
    op!("get", "/api/v1/capacity", "What is free now and when matching machines free up (?arch=&site=&min_ram_gib=&min_cpus=&min_disk_gib=&tags=a,b): available machines by site, arch, RAM and CPU class and tag; the waitlist's demand; the timeline of lease ends and reservations with the free count after each", "any role", None, Some("CapacityOutlook")),
    op!("get", "/api/v1/lease-policy", "The cooperative-wide lease policy (maximum lease length, idle power-off times)", "any role", None, Some("LeasePolicy")),
    op!("put", "/api/v1/lease-policy/idle-power-off", "Set (after_secs) or clear (null) how long a machine sits available and unleased before its BMC powers it off, cooperative-wide or for one site", "admin, staff", Some("IdlePowerOff"), Some("LeasePolicy")),
    op!("put", "/api/v1/lease-policy", "Set the maximum lease length (null: none)", "admin, staff", Some("LeasePolicy"), Some("LeasePolicy")),
    op!("get", "/api/v1/groups/{name}/quota", "A group's quotas and its use of them", "any role (members: own)", None, Some("GroupQuota")),
    op!("put", "/api/v1/groups/{name}/quota", "Set a group's quotas: machines, machine-hours, image bytes and image count (null or absent: unlimited)", "admin, staff", Some("QuotaRequest"), Some("GroupQuota")),
    op!("get", "/api/v1/groups/{name}/webhook", "A group's lease-end webhook", "admin, staff, member (own)", None, Some("Webhook")),
    op!("put", "/api/v1/groups/{name}/webhook", "Set (or with null clear) the URL called 24 h and 1 h before each of the group's leases ends", "admin, staff, member (own)", Some("Webhook"), Some("Webhook")),
    op!("get", "/api/v1/groups/{name}/ssh-keys", "A group's SSH public keys (injected on every reimage of its machines)", "admin, staff, member (own)", None, Some("[SshKey]")),
    op!("post", "/api/v1/groups/{name}/ssh-keys", "Add an SSH public key to a group", "admin, staff, member (own)", Some("SshKeyRequest"), Some("[SshKey]")),
    op!("delete", "/api/v1/groups/{name}/ssh-keys/{fingerprint}", "Remove a group's SSH key by fingerprint (SHA256:…, URL-encoded) or comment", "admin, staff, member (own)", None, None),
    op!("get", "/api/v1/users", "List users", "admin, staff", None, Some("[User]")),
    op!("post", "/api/v1/users", "Add a user (staff may add members)", "admin, staff", Some("NewUser"), Some("User")),
    op!("delete", "/api/v1/users/{name}", "Delete a user and its tokens (not yourself, not the last admin)", "admin; staff for members", None, None),
    op!("post", "/api/v1/users/{name}/disable", "Disable a user: its tokens stop at once (not yourself, not the last admin)", "admin; staff for members", None, Some("User")),
    op!("post", "/api/v1/users/{name}/enable", "Enable a disabled user again", "admin; staff for members", None, Some("User")),
    op!("get", "/api/v1/users/{name}/ssh-keys", "A user's SSH public keys (console logins over SSH)", "any role (own); staff for members; admin", None, Some("[UserSshKey]")),
    op!("post", "/api/v1/users/{name}/ssh-keys", "Add an SSH public key to a user; a key another user or any group holds is refused (409)", "any role (own); staff for members; admin", Some("SshKeyRequest"), Some("[UserSshKey]")),
    op!("delete", "/api/v1/users/{name}/ssh-keys/{fingerprint}", "Remove a user's SSH key by fingerprint (SHA256:…, URL-encoded)", "any role (own); staff for members; admin", None, None),
    op!("get", "/api/v1/tokens", "List tokens (never the secret)", "any role (own)", None, Some("[ApiToken]")),
    op!("post", "/api/v1/tokens", "Create a token; the response is the only time it is shown", "any role (own); admin, staff for others", Some("TokenRequest"), Some("IssuedToken")),
    op!("delete", "/api/v1/tokens/{prefix}", "Revoke a token", "owner, admin", None, None),
    op!("put", "/api/v1/users/{name}/password", "Set a user's web password (argon2id); own: give current_password when one is set; someone else's is temporary unless change_required is false", "any role (own); staff for members; admin", Some("PasswordRequest"), None),
    op!("post", "/api/v1/users/{name}/password/reset", "Force a password reset: a new password at next sign-in; the user's sessions end", "staff for members; admin", None, None),
    op!("get", "/api/v1/sessions", "Browser sessions (?user=; admins: ?user=* for all), never their cookies", "any role (own); staff for members; admin", None, Some("[WebSession]")),
    op!("delete", "/api/v1/sessions/{id}", "End a browser session", "owner; staff for members; admin", None, None),
    op!("get", "/api/v1/events", "The audit log, newest first (?machine=&group=&limit=; after=ID follows newer events, before=ID pages back); members see their group's ledger", "any role", None, Some("[AuditEvent]")),
    op!("get", "/api/v1/dhcp/leases", "The authoritative DHCP server's leases (bound, released, declined holds), in address order, with the machine each MAC belongs to", "admin, staff, technician", None, Some("[DhcpLease]")),
    op!("get", "/api/v1/machines/{name}/boot-events", "What the boot server saw of the machine's NICs, newest first: DHCP messages (arch, vendor class), TFTP files, /boot fetches, the agent's claim (?limit=&after=ID to follow)", "any role (members: their group's)", None, Some("[BootEvent]")),
    op!("get", "/api/v1/boot-events", "One MAC's boot events, enrolled or not (?mac=&limit=&after=)", "admin, staff", None, Some("[BootEvent]")),
    op!("get", "/api/v1/export", "Export the inventory (?with_secrets=true for BMC passwords and token hashes)", "admin", None, Some("InventoryExport")),
    op!("post", "/api/v1/import", "Import an export, all or nothing", "admin", Some("InventoryExport"), Some("ImportResult")),
];

fn schema_ref(name: &str) -> Value {
    match name.strip_prefix('[').and_then(|n| n.strip_suffix(']')) {
        Some(inner) => {
            json!({"type": "array", "items": {"$ref": format!("#/components/schemas/{inner}")}})
        }
        None => json!({"$ref": format!("#/components/schemas/{name}")}),
    }
}

fn schemas() -> Value {
    let state = json!({"type": "string", "enum": ["new","inspecting","available","allocated","deploying","deployed","releasing","maintenance","failed","retired"]});
    let role = json!({"type": "string", "enum": ["admin","staff","technician","member"]});
    let nic = json!({"type": "object", "required": ["mac"], "properties": {"mac": {"type": "string", "example": "52:54:00:12:34:56"}, "name": {"type": "string"}, "pxe": {"type": "boolean"}}});
    let disk = json!({"type": "object", "required": ["name", "size_bytes"], "properties": {"name": {"type": "string"}, "size_bytes": {"type": "integer"}, "model": {"type": "string"}, "serial": {"type": "string"}}});
    let new_bmc = json!({"type": "object", "required": ["url"], "properties": {
        "url": {"type": "string", "description": "redfish+https://host[:port][/redfish/v1/Systems/ID], redfish+http://…, or ipmi://host[:port]"},
        "protocol": {"type": "string", "enum": ["redfish", "ipmi"]}, "username": {"type": "string"},
        "password": {"type": "string", "writeOnly": true, "description": "stored encrypted; never returned"},
        "tls_ca_pem": {"type": "string"}, "tls_fingerprint": {"type": "string"}, "tls_insecure": {"type": "boolean"}}});
    let machine_fields = json!({
        "serial": {"type": "string"}, "vendor": {"type": "string"}, "model": {"type": "string"},
        "arch": {"type": "string", "enum": ["x86_64", "aarch64", "riscv64", "ppc64le"]},
        "cpu_count": {"type": "integer"}, "cpu_model": {"type": "string"}, "ram_mib": {"type": "integer"},
        "disks": {"type": "array", "items": {"$ref": "#/components/schemas/Disk"}},
        "tags": {"type": "array", "items": {"type": "string"}},
        "site": {"type": "string"}, "rack": {"type": "string"}, "rack_unit": {"type": "string"}, "notes": {"type": "string"}
    });
    let mut new_machine = machine_fields.clone();
    new_machine["name"] = json!({"type": "string"});
    new_machine["nics"] = json!({"type": "array", "items": {"$ref": "#/components/schemas/Nic"}});
    new_machine["macs"] = json!({"type": "array", "items": {"type": "string"}});
    new_machine["bmc"] = json!({"$ref": "#/components/schemas/NewBmc"});
    let mut patch = machine_fields.clone();
    patch["nics"] = json!({"type": "array", "items": {"$ref": "#/components/schemas/Nic"}});
    patch["add_tags"] = json!({"type": "array", "items": {"type": "string"}});
    patch["remove_tags"] = json!({"type": "array", "items": {"type": "string"}});
    patch["bmc"] = json!({"$ref": "#/components/schemas/NewBmc"});
    patch["remove_bmc"] = json!({"type": "boolean"});
    let mut machine = machine_fields;
    machine["id"] = json!({"type": "integer"});
    machine["name"] = json!({"type": "string"});
    machine["nics"] = json!({"type": "array", "items": {"$ref": "#/components/schemas/Nic"}});
    machine["state"] = json!({"$ref": "#/components/schemas/MachineState"});
    machine["state_reason"] = json!({"type": "string"});
    machine["state_changed_at"] = json!({"type": "integer", "description": "unix ms"});
    machine["lease_id"] = json!({"type": ["integer", "null"]});
    machine["member_group"] = json!({"type": ["string", "null"]});
    machine["energy_wh"] = json!({"type": "number"});
    machine["bmc"] = json!({"type": ["object", "null"], "description": "protocol, url, username, has_password, TLS settings and health; never the password"});
    json!({
        "Status": {"type": "object", "properties": {"status": {"type": "string"}}},
        "Error": {"type": "object", "properties": {"error": {"type": "object", "required": ["code", "message"], "properties": {
            "code": {"type": "string"}, "message": {"type": "string"}, "field": {"type": "string"}}}}},
        "MachineState": state,
        "Role": role,
        "Nic": nic,
        "Disk": disk,
        "NewBmc": new_bmc,
        "NewMachine": {"type": "object", "required": ["name"], "additionalProperties": false, "properties": new_machine},
        "MachinePatch": {"type": "object", "additionalProperties": false, "properties": patch},
        "Machine": {"type": "object", "properties": machine},
        "StateChange": {"type": "object", "required": ["state"], "additionalProperties": false, "properties": {
            "state": {"$ref": "#/components/schemas/MachineState"}, "reason": {"type": "string"},
            "expected_state": {"$ref": "#/components/schemas/MachineState"}}},
        "NewSite": {"type": "object", "required": ["name"], "additionalProperties": false, "properties": {"name": {"type": "string"}, "description": {"type": "string"}}},
        "Instances": {"type": "object", "properties": {"instances": {"type": "array", "items": {"type": "object", "properties": {"id": {"type": "string"}, "site": {"type": ["string", "null"]}, "version": {"type": "string"}, "api_url": {"type": "string"}, "started_at": {"type": "integer"}, "heartbeat_at": {"type": "integer"}, "alive": {"type": "boolean"}, "jobs": {"type": "array", "items": {"type": "integer"}}, "leads": {"type": "array", "items": {"type": "string"}}}}}, "sites_without_instance": {"type": "array", "items": {"type": "string"}}}},
        "Site": {"type": "object", "properties": {"id": {"type": "integer"}, "name": {"type": "string"}, "description": {"type": "string"}}},
        "NewRack": {"type": "object", "required": ["site", "name"], "additionalProperties": false, "properties": {"site": {"type": "string"}, "name": {"type": "string"}, "position": {"type": "string"}}},
        "Rack": {"type": "object", "properties": {"id": {"type": "integer"}, "site": {"type": "string"}, "name": {"type": "string"}, "position": {"type": "string"}}},
        "NewGroup": {"type": "object", "required": ["name"], "additionalProperties": false, "properties": {"name": {"type": "string"}, "description": {"type": "string"}}},
        "GroupPatch": {"type": "object", "additionalProperties": false, "properties": {"quota_max_machines": {"type": "integer"}, "quota_machine_hours_month": {"type": "integer"}, "ssh_keys": {"type": "array", "items": {"type": "string"}}}},
        "MemberGroup": {"type": "object", "properties": {"id": {"type": "integer"}, "name": {"type": "string"}, "description": {"type": "string"},
            "quota_max_machines": {"type": ["integer", "null"]}, "quota_machine_hours_month": {"type": ["integer", "null"]}, "ssh_keys": {"type": "array", "items": {"type": "string"}}}},
        "NewUser": {"type": "object", "required": ["name", "role"], "properties": {"name": {"type": "string"}, "role": {"$ref": "#/components/schemas/Role"}, "member_group": {"type": "string"}}},
        "User": {"type": "object", "properties": {"id": {"type": "integer"}, "name": {"type": "string"}, "role": {"$ref": "#/components/schemas/Role"}, "member_group": {"type": ["string", "null"]}}},
        "TokenOwner": {"type": "object", "properties": {"user_id": {"type": "integer"}, "user": {"type": "string"}, "role": {"$ref": "#/components/schemas/Role"}, "member_group": {"type": ["string", "null"]}, "token_prefix": {"type": "string"}}},
        "TokenRequest": {"type": "object", "additionalProperties": false, "properties": {"user": {"type": "string"}, "description": {"type": "string"}, "expires_in_secs": {"type": "integer"}}},
        "PasswordRequest": {"type": "object", "required": ["password"], "additionalProperties": false, "properties": {"password": {"type": "string", "minLength": 10}, "current_password": {"type": "string"}, "change_required": {"type": "boolean"}}},
        "WebSession": {"type": "object", "properties": {"id": {"type": "integer"}, "user": {"type": "string"}, "method": {"type": "string", "enum": ["password", "token"]},
            "created_at": {"type": "integer"}, "last_seen_at": {"type": "integer"}, "expires_at": {"type": "integer"}, "revoked_at": {"type": ["integer", "null"]}}},
        "IssuedToken": {"type": "object", "properties": {"token": {"type": "string"}, "prefix": {"type": "string"}, "user": {"type": "string"}}},
        "ApiToken": {"type": "object", "properties": {"prefix": {"type": "string"}, "user": {"type": "string"}, "description": {"type": "string"},
            "created_at": {"type": "integer"}, "expires_at": {"type": ["integer", "null"]}, "revoked_at": {"type": ["integer", "null"]}, "last_used_at": {"type": ["integer", "null"]}}},
        "DhcpLease": {"type": "object", "properties": {
            "key": {"type": "string", "description": "the lease key: a MAC, id:HEX (client identifier) or declined:IP"},
            "mac": {"type": ["string", "null"], "description": "the client's hardware address; null for a declined hold"},
            "ip": {"type": "string"}, "hostname": {"type": ["string", "null"]}, "client_id": {"type": ["string", "null"]},
            "state": {"type": "string", "enum": ["bound", "released", "declined"]},
            "expires_at": {"type": "integer", "description": "unix ms"},
            "machine": {"type": ["string", "null"], "description": "the enrolled machine with a NIC of this MAC"}}},
        "AuditEvent": {"type": "object", "properties": {"id": {"type": "integer"}, "at": {"type": "integer"}, "actor": {"type": "string"}, "action": {"type": "string"},
            "target_kind": {"type": "string"}, "target": {"type": "string"}, "machine": {"type": ["string", "null"]}, "member_group": {"type": ["string", "null"]},
            "outcome": {"type": "string", "enum": ["ok", "denied", "failed"]}, "detail": {"type": "object"},
            "source": {"type": ["string", "null"], "description": "the caller's address (ip:port), when a request was behind the event"},
            "token_prefix": {"type": ["string", "null"], "description": "the public prefix of the caller's token (never the secret)"}}},
        "InventoryExport": {"type": "object", "required": ["format", "version", "sites", "racks", "groups", "users", "machines"],
            "description": "The open exchange format; see docs/export-format.md",
            "properties": {"format": {"const": "rackshare-inventory"}, "version": {"const": 1}, "sites": {"type": "array"}, "racks": {"type": "array"},
            "groups": {"type": "array"}, "users": {"type": "array"}, "machines": {"type": "array"}, "tokens": {"type": "array"}}},
        "PowerRequest": {"type": "object", "required": ["action"], "additionalProperties": false, "properties": {"action": {"type": "string", "enum": ["on", "off", "soft", "cycle", "reset"]}}},
        "PowerStatus": {"type": "object", "properties": {"machine": {"type": "string"}, "power_state": {"type": "string"}}},
        "PowerReading": {"type": "object", "properties": {"machine": {"type": "string"}, "watts": {"type": ["number", "null"]}, "energy_wh": {"type": "number"}}},
        "BootRequest": {"type": "object", "required": ["device"], "additionalProperties": false, "properties": {"device": {"type": "string", "enum": ["pxe", "disk", "cd"]}, "persistent": {"type": "boolean"}, "mode": {"type": "string", "enum": ["uefi", "legacy"]}}},
        "BmcCheck": {"type": "object", "properties": {"machine": {"type": "string"}, "bmc": {"type": "string"}, "power_state": {"type": "string"}, "vendor": {"type": ["string", "null"]}, "model": {"type": ["string", "null"]}, "serial": {"type": ["string", "null"]}, "warnings": {"type": "array", "items": {"type": "string"}}}},
        "InspectResult": {"type": "object", "properties": {"machine": {"$ref": "#/components/schemas/Machine"}, "warnings": {"type": "array", "items": {"type": "string"}}}},
        "Image": {"type": "object", "properties": {"id": {"type": "integer"}, "name": {"type": "string"}, "version": {"type": "string"}, "arch": {"type": "string"},
            "format": {"type": "string", "enum": ["raw", "qcow2", "raw.zst"]}, "size_bytes": {"type": "integer"}, "sha256": {"type": "string"},
            "owner_group": {"type": ["string", "null"]}, "created_by": {"type": "string"}, "created_at": {"type": "integer"}}},
        "ImageImport": {"type": "object", "required": ["name", "url"], "additionalProperties": false, "properties": {"name": {"type": "string"}, "version": {"type": "string"},
            "arch": {"type": "string"}, "format": {"type": "string"}, "sha256": {"type": "string"}, "group": {"type": "string"}, "url": {"type": "string"}}},
        "ImportResult": {"type": "object", "properties": {"imported": {"type": "object"}}},
        "NewLease": {"type": "object", "required": ["count"], "additionalProperties": false, "properties": {
            "group": {"type": "string", "description": "members: their own, may be omitted"}, "count": {"type": "integer", "minimum": 1},
            "min_ram_gib": {"type": "integer"}, "min_cpus": {"type": "integer"}, "min_disk_gib": {"type": "integer", "description": "at least one disk this large"},
            "arch": {"type": "string"}, "tags": {"type": "array", "items": {"type": "string"}}, "site": {"type": "string"},
            "starts_at": {"type": "integer", "description": "unix ms; in the future: a reservation"}, "ends_at": {"type": "integer", "description": "unix ms"},
            "duration_secs": {"type": "integer", "description": "instead of ends_at; default 24 h"}, "wait_for_capacity": {"type": "boolean"}}},
        "Lease": {"type": "object", "properties": {"id": {"type": "integer"}, "group": {"type": "string"}, "state": {"type": "string", "enum": ["pending", "active", "ended"]},
            "waiting": {"type": "boolean"}, "machine_count": {"type": "integer"}, "constraints": {"type": "object"}, "starts_at": {"type": "integer"}, "ends_at": {"type": "integer"},
            "created_by": {"type": "string"}, "created_at": {"type": "integer"}, "ended_at": {"type": ["integer", "null"]}, "end_reason": {"type": ["string", "null"]},
            "machines": {"type": "array", "items": {"type": "object", "properties": {"name": {"type": "string"}, "allocated_at": {"type": "integer"}, "released_at": {"type": ["integer", "null"]}}}}}},
        "LeaseDetail": {"allOf": [{"$ref": "#/components/schemas/Lease"}, {"type": "object", "properties": {"energy_kwh": {"type": "number"},
            "wipe_certificates": {"type": "array", "items": {"type": "object", "properties": {"id": {"type": "integer"}, "job_id": {"type": "integer"}, "machine": {"type": "string"}, "body": {"type": "object"}, "created_at": {"type": "integer"}}}}}}]},
        "LeaseExtend": {"type": "object", "additionalProperties": false, "properties": {"ends_at": {"type": "integer", "description": "unix ms"}, "by_secs": {"type": "integer"}}},
        "LeaseEnd": {"type": "object", "additionalProperties": false, "properties": {"reason": {"type": "string"}}},
        "HeldBackMachine": {"type": "object", "properties": {"name": {"type": "string"}, "state": {"type": "string"}, "site": {"type": ["string", "null"]}, "reasons": {"type": "array", "items": {"enum": ["bmc_unreachable", "last_wipe_failed"]}}, "bmc_consecutive_failures": {"type": "integer"}, "bmc_last_error": {"type": ["string", "null"]}, "last_wipe_job": {"type": ["integer", "null"]}}},
        "CapacityOutlook": {"type": "object", "properties": {"constraints": {"type": "object"}, "available": {"type": "integer"}, "waiting": {"type": "integer"}, "free_now": {"type": "integer"}, "being_wiped": {"type": "integer"}, "counts": {"type": "array", "items": {"type": "object", "properties": {"by": {"enum": ["site", "arch", "ram", "cpus", "tag"]}, "class": {"type": "string"}, "free": {"type": "integer"}}}}, "timeline": {"type": "array", "items": {"type": "object", "properties": {"at": {"type": "integer"}, "machines": {"type": "integer"}, "cause": {"enum": ["lease_ends", "reservation_starts", "reservation_ends"]}, "free": {"type": "integer"}}}}}},
        "GroupUsage": {"type": "object", "properties": {"month": {"type": "string"}, "group": {"type": "string"}, "machine_hours_used": {"type": "number"}, "machine_hours_booked": {"type": "number"}, "energy_kwh": {"type": "number"}, "energy_kwh_counter": {"type": "number"}, "energy_kwh_estimated": {"type": "number"}, "energy_source": {"enum": ["counter", "estimated", "mixed", "none"]}, "leases": {"type": "integer"}, "wipes": {"type": "integer"}, "wipes_failed": {"type": "integer"}}},
        "LeasePolicy": {"type": "object", "additionalProperties": false, "properties": {"max_lease_hours": {"type": ["integer", "null"]}, "idle_power_off": {"type": "array", "readOnly": true, "items": {"$ref": "#/components/schemas/IdlePowerOff"}}}},
        "IdlePowerOff": {"type": "object", "additionalProperties": false, "required": ["after_secs"], "properties": {"site": {"type": ["string", "null"]}, "after_secs": {"type": ["integer", "null"], "minimum": 1}}},
        "GroupQuota": {"type": "object", "properties": {"group": {"type": "string"}, "max_machines": {"type": ["integer", "null"]}, "machine_hours_month": {"type": ["integer", "null"]},
            "machines_in_use": {"type": "integer"}, "machine_hours_used": {"type": "number"}, "machine_hours_booked": {"type": "number"},
            "max_image_bytes": {"type": ["integer", "null"]}, "max_images": {"type": ["integer", "null"]}, "image_bytes_stored": {"type": "integer"}, "images_stored": {"type": "integer"}}},
        "QuotaRequest": {"type": "object", "additionalProperties": false, "properties": {"max_machines": {"type": ["integer", "null"]}, "machine_hours_month": {"type": ["integer", "null"]},
            "max_image_bytes": {"type": ["integer", "null"]}, "max_images": {"type": ["integer", "null"]}}},
        "SshKey": {"type": "object", "properties": {"fingerprint": {"type": "string"}, "key": {"type": "string"}}},
        "Webhook": {"type": "object", "additionalProperties": false, "properties": {"url": {"type": ["string", "null"]}}},

        "UserSshKey": {"type": "object", "properties": {"fingerprint": {"type": "string"}, "key": {"type": "string"}, "created_at": {"type": "integer"}}},
        "SshKeyRequest": {"type": "object", "required": ["key"], "additionalProperties": false, "properties": {"key": {"type": "string"}}},
        "JobRequest": {"type": "object", "required": ["machine", "kind"], "additionalProperties": false, "properties": {"machine": {"type": "string"},
            "kind": {"type": "string", "enum": ["reimage", "inspect", "wipe"]}, "image": {"type": "string", "description": "NAME or NAME:VERSION"}, "user_data": {"type": "string"}}},
        "JobStep": {"type": "object", "properties": {"seq": {"type": "integer"}, "name": {"type": "string"}, "state": {"type": "string", "enum": ["pending", "running", "succeeded", "failed", "skipped"]},
            "attempts": {"type": "integer"}, "max_attempts": {"type": "integer"}, "timeout_secs": {"type": "integer"}, "started_at": {"type": ["integer", "null"]}, "finished_at": {"type": ["integer", "null"]}, "error": {"type": ["string", "null"]}}},
        "Job": {"type": "object", "properties": {"id": {"type": "integer"}, "kind": {"type": "string", "enum": ["reimage", "inspect", "wipe"]},
            "state": {"type": "string", "enum": ["queued", "running", "succeeded", "failed", "cancelled"]}, "machine": {"type": "string"}, "image": {"type": ["string", "null"]},
            "lease_id": {"type": ["integer", "null"]}, "member_group": {"type": ["string", "null"]}, "current_step": {"type": "integer"}, "step": {"type": ["string", "null"]},
            "phase": {"type": "string"}, "progress_bytes": {"type": "integer"}, "progress_total": {"type": "integer"}, "error": {"type": ["string", "null"]},
            "requested_by": {"type": "string"}, "cancel_requested_by": {"type": ["string", "null"]}, "result": {"description": "the agent's report"},
            "created_at": {"type": "integer"}, "started_at": {"type": ["integer", "null"]}, "finished_at": {"type": ["integer", "null"]},
            "steps": {"type": "array", "items": {"$ref": "#/components/schemas/JobStep"}}}},
        "BootEvent": {"type": "object", "properties": {"id": {"type": "integer"}, "mac": {"type": "string"}, "at": {"type": "integer"}, "kind": {"type": "string"}, "detail": {"type": "object"}}},
        "JobEvent": {"type": "object", "properties": {"id": {"type": "integer"}, "job_id": {"type": "integer"}, "at": {"type": "integer"}, "level": {"type": "string"}, "message": {"type": "string"}}},
        "JobConsole": {"type": "object", "properties": {"job": {"type": "integer"}, "bytes": {"type": "integer"}, "text": {"type": "string"}}}
    })
}

/// The whole document.
pub fn document() -> Value {
    let mut paths: Map<String, Value> = Map::new();
    for op in OPERATIONS {
        let mut o = json!({
            "x-rackshare-listener": op.listener(),
            "summary": op.summary,
            "description": format!("Allowed: {}.", op.roles),
            "responses": {
                "default": {"description": "error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
            }
        });
        let ok = match op.response {
            Some(r) => {
                json!({"description": "success", "content": {"application/json": {"schema": schema_ref(r)}}})
            }
            None => json!({"description": "success"}),
        };
        let code = if op.method == "post"
            && op.path != "/api/v1/import"
            && !op.path.ends_with("/state")
            && !op.path.starts_with("/api/v1/leases/")
        {
            "201"
        } else if op.response.is_none() && op.method == "delete" {
            "204"
        } else {
            "200"
        };
        o["responses"][code] = ok;
        if let Some(b) = op.body {
            o["requestBody"] = json!({"required": true, "content": {"application/json": {"schema": schema_ref(b)}}});
        }
        if op.roles != "anyone" {
            o["security"] = json!([{"bearer": []}]);
        }
        let params: Vec<Value> = op
            .path
            .split('/')
            .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            .map(|p| json!({"name": p, "in": "path", "required": true, "schema": {"type": "string"}}))
            .collect();
        if !params.is_empty() {
            o["parameters"] = Value::Array(params);
        }
        let entry = paths
            .entry(op.path.to_string())
            .or_insert_with(|| json!({}));
        entry[op.method] = o;
    }
    json!({
        "openapi": "3.1.0",
        "info": {"title": "rackshare API", "version": env!("CARGO_PKG_VERSION"),
                 "description": "Bare-metal provisioning for hardware cooperatives. Errors are {\"error\":{\"code\",\"message\",\"field\"}}."},
        "paths": paths,
        "components": {
            "schemas": schemas(),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}
        }
    })
}
