// ipgate console: plain JavaScript, no framework, no build step.
// The key is held in one variable of this closure: never stored, never in a URL.
// With an operator's link the page runs on a session cookie instead (HttpOnly: the
// script never sees it) and sends the session's CSRF token with every write.
"use strict";
(function () {
  var body = document.body;
  var base = body.dataset.base;
  var keyHeader = body.dataset.keyHeader;
  var bearer = body.dataset.bearer === "true";
  var DAY = 86400000;

  // The signed-in state: { key } or { csrf }, plus who the caller is.
  var auth = null;
  var me = null;
  var entries = [];

  function $(id) { return document.getElementById(id); }

  function say(text) {
    var m = $("message");
    m.textContent = text;
    m.hidden = !text;
  }

  // One call to the management API, as the key holder or as the session.
  function api(method, path, payload) {
    var headers = {};
    var url;
    if (auth.key !== undefined) {
      headers[keyHeader] = bearer ? "Bearer " + auth.key : auth.key;
      url = path;
    } else {
      headers["X-Ipgate-Csrf"] = auth.csrf;
      url = base + "session/api" + path;
    }
    var init = { method: method, headers: headers, credentials: "same-origin", cache: "no-store" };
    if (payload !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(payload);
    }
    return fetch(url, init).then(function (r) {
      return r.text().then(function (text) {
        var json = null;
        try { json = text ? JSON.parse(text) : null; } catch (e) { json = null; }
        if (!r.ok) {
          var why = json && json.Error && json.Error[0] && json.Error[0].error_description;
          throw new Error(why || ("The gateway answered " + r.status + "."));
        }
        return json;
      });
    });
  }

  function items(json, kind) {
    return ((json && json.Response) || []).map(function (x) { return x[kind]; });
  }

  // "2025-01-31 14:05:09.123456" (UTC) to a Date.
  function when(text) {
    return text ? new Date(text.replace(" ", "T").slice(0, 23) + "Z") : null;
  }

  function ago(text) {
    var t = when(text);
    if (!t) { return "never"; }
    var s = Math.max(0, Math.round((Date.now() - t.getTime()) / 1000));
    if (s < 60) { return s + " s ago"; }
    if (s < 3600) { return Math.round(s / 60) + " min ago"; }
    if (s < 86400) { return Math.round(s / 3600) + " h ago"; }
    return Math.round(s / 86400) + " days ago";
  }

  function cell(row, text, cls) {
    var td = document.createElement("td");
    td.textContent = text;
    if (cls) { td.className = cls; }
    row.appendChild(td);
    return td;
  }

  function button(text, label, action) {
    var b = document.createElement("button");
    b.type = "button";
    b.textContent = text;
    b.setAttribute("aria-label", label);
    b.addEventListener("click", function () {
      b.disabled = true;
      action().then(function () { b.disabled = false; }, function () { b.disabled = false; });
    });
    return b;
  }

  function fill(id, rows, make) {
    var tbody = $(id).querySelector("tbody");
    tbody.textContent = "";
    if (!rows.length) {
      var tr = document.createElement("tr");
      var td = cell(tr, "None.", "empty");
      td.colSpan = $(id).querySelectorAll("thead th").length;
      tbody.appendChild(tr);
      return;
    }
    rows.forEach(function (r) {
      var tr = document.createElement("tr");
      make(tr, r);
      tbody.appendChild(tr);
    });
  }

  function paths() {
    var c = "/v1/user/" + me.user_id + "/credential-password-ip/" + me.credential_id;
    return { credential: c, ips: c + "/ip", refused: c + "/refused-ip", suggested: c + "/suggested-ip" };
  }

  function unused(e) {
    if (e.status !== "ACTIVE") { return false; }
    var seen = when(e.last_seen) || when(e.created);
    return Date.now() - seen.getTime() > 30 * DAY;
  }

  function listedAs(ip) {
    for (var i = 0; i < entries.length; i++) {
      if (entries[i].ip === ip) { return entries[i].status; }
    }
    return null;
  }

  function addAction(ip) {
    return button("Add", "Add " + ip + " to the list", function () { return add(ip); });
  }

  function render(credential, ips, refused, suggested) {
    entries = ips;
    $("credential-id").textContent = "#" + credential.id;
    $("credential-status").textContent = credential.status;
    $("credential-mode").textContent = credential.mode === "shadow"
      ? "shadow (requests from unlisted addresses are let through and counted)"
      : "enforce (only ACTIVE addresses are let through)";
    var d = credential.permitted_device;
    $("credential-device").textContent = d ? d.description + " (" + d.ip + ")" : "not registered yet";
    var mine = listedAs(me.caller_ip);
    $("caller").textContent = (me.caller_ip || "unknown") + ": " +
      (mine === "ACTIVE" ? "ACTIVE on this key" : mine === "INACTIVE" ? "INACTIVE on this key" : "not on this key's list");
    $("caller").className = mine === "ACTIVE" ? "ok" : "warn";
    $("signed-in-with").textContent = auth.key !== undefined ? "your API key" : "an operator's console link";

    fill("entries", ips, function (tr, e) {
      cell(tr, e.ip, "ip");
      cell(tr, e.status, e.status === "ACTIVE" ? "ok" : "off");
      cell(tr, ago(e.created));
      var seen = cell(tr, ago(e.last_seen));
      if (unused(e)) {
        var mark = document.createElement("strong");
        mark.className = "unused";
        mark.textContent = " unused 30+ days";
        seen.appendChild(mark);
      }
      cell(tr, String(e.requests));
      var next = e.status === "ACTIVE" ? "INACTIVE" : "ACTIVE";
      var td = cell(tr, "");
      td.appendChild(button("Set " + next, "Set " + e.ip + " " + next, function () { return setStatus(e, next); }));
    });
    fill("refused", refused, function (tr, r) {
      cell(tr, r.ip, "ip");
      cell(tr, String(r.requests));
      cell(tr, ago(r.first_seen));
      cell(tr, ago(r.last_seen));
      var listed = listedAs(r.ip);
      cell(tr, listed || "no");
      var td = cell(tr, "");
      if (!listed) { td.appendChild(addAction(r.ip)); }
    });
    fill("suggested", suggested, function (tr, s) {
      cell(tr, s.ip, "ip");
      cell(tr, String(s.allowed));
      cell(tr, String(s.shadow));
      cell(tr, String(s.refused));
      cell(tr, ago(s.last_seen));
      var listed = listedAs(s.ip);
      cell(tr, listed || "no");
      var td = cell(tr, "");
      if (!listed) { td.appendChild(addAction(s.ip)); }
    });
  }

  function load() {
    var p = paths();
    return Promise.all([
      api("GET", p.credential),
      api("GET", p.ips + "?count=200"),
      api("GET", p.refused),
      api("GET", p.suggested)
    ]).then(function (r) {
      render(items(r[0], "CredentialPasswordIp")[0], items(r[1], "PermittedIp"),
        items(r[2], "RefusedIp"), items(r[3], "SuggestedIp"));
    });
  }

  function done(what) {
    return load().then(function () { say(what); });
  }

  function add(ip) {
    say("");
    return api("POST", paths().ips, { ip: ip, status: "ACTIVE" })
      .then(function () { return done(ip + " was added and is ACTIVE."); })
      .catch(function (e) { say("Could not add " + ip + ": " + e.message); });
  }

  function setStatus(e, status) {
    say("");
    return api("PUT", paths().ips + "/" + e.id, { status: status })
      .then(function () { return done(e.ip + " is now " + status + "."); })
      .catch(function (err) { say("Could not set " + e.ip + " " + status + ": " + err.message); });
  }

  function show(signedIn) {
    $("login").hidden = signedIn;
    $("view").hidden = !signedIn;
  }

  function start(who, how) {
    me = who;
    auth = how;
    show(true);
    return load().then(function () { $("view-title").focus(); });
  }

  $("view-title").tabIndex = -1;

  $("login-form").addEventListener("submit", function (ev) {
    ev.preventDefault();
    var input = $("key");
    var key = input.value.trim();
    input.value = "";
    say("");
    var headers = {};
    headers[keyHeader] = bearer ? "Bearer " + key : key;
    fetch(base + "me", { headers: headers, cache: "no-store", credentials: "omit" })
      .then(function (r) {
        if (r.status === 401) { throw new Error("Enter your API key."); }
        if (r.status === 403) {
          throw new Error("This key is not accepted from your address. Check the key, or ask your operator for a console link.");
        }
        if (!r.ok) { throw new Error("The gateway answered " + r.status + "; try again later."); }
        return r.json();
      })
      .then(function (who) { return start(who, { key: key }); })
      .catch(function (e) { say(e.message); input.focus(); });
  });

  $("add-form").addEventListener("submit", function (ev) {
    ev.preventDefault();
    var input = $("new-ip");
    var ip = input.value.trim();
    add(ip).then(function () { input.value = ""; });
  });

  $("refresh").addEventListener("click", function () {
    say("");
    load().catch(function (e) { say(e.message); });
  });

  $("logout").addEventListener("click", function () {
    auth = null;
    me = null;
    entries = [];
    ["entries", "refused", "suggested"].forEach(function (id) {
      $(id).querySelector("tbody").textContent = "";
    });
    say("Signed out.");
    show(false);
    $("key").focus();
  });

  // Opened from an operator's link: the session cookie says who.
  fetch(base + "session/me", { cache: "no-store", credentials: "same-origin" })
    .then(function (r) { return r.ok ? r.json() : null; })
    .then(function (who) {
      if (who) { return start(who, { csrf: who.csrf }); }
      $("key").focus();
    })
    .catch(function () { $("key").focus(); });
})();
