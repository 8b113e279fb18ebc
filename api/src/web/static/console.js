// rackshare: the console page. Opens the machine's console WebSocket (session cookie plus the
// page's CSRF token in the query, since a browser cannot set headers on a WebSocket), shows
// its output in xterm.js and sends keystrokes; "take control" / "give control" are the text
// frames of the console protocol.
(function () {
  "use strict";
  var box = document.getElementById("console");
  var status = document.getElementById("console-status");
  var take = document.getElementById("take-control");
  var give = document.getElementById("give-control");
  if (!box || !status) {
    return;
  }
  function say(text) {
    status.textContent = text;
  }
  if (typeof window.Terminal !== "function" || !window.WebSocket) {
    say("The console is unavailable: this browser cannot run the terminal.");
    return;
  }
  var term = new window.Terminal({ convertEol: false, cursorBlink: true, scrollback: 5000 });
  term.open(box);
  var machine = box.getAttribute("data-machine");
  var csrf = box.getAttribute("data-csrf");
  var scheme = window.location.protocol === "https:" ? "wss://" : "ws://";
  var url = scheme + window.location.host + "/api/v1/machines/" +
    encodeURIComponent(machine) + "/console?csrf=" + encodeURIComponent(csrf);
  var opened = false;
  var encoder = new TextEncoder();
  var ws = new WebSocket(url);
  ws.binaryType = "arraybuffer";
  say("Connecting to the console of " + machine + "…");

  function control(type) {
    if (ws.readyState === WebSocket.OPEN) {
      ws.send(JSON.stringify({ type: type }));
    }
  }
  ws.addEventListener("open", function () {
    opened = true;
    say("Connected. You are watching; take control to type.");
    term.focus();
  });
  ws.addEventListener("message", function (ev) {
    if (typeof ev.data !== "string") {
      term.write(new Uint8Array(ev.data));
      return;
    }
    var msg;
    try {
      msg = JSON.parse(ev.data);
    } catch (e) {
      return;
    }
    if (msg.type === "control") {
      say(msg.writer ? msg.writer + " has control." : "Nobody has control; take it to type.");
    } else if (msg.type === "closed") {
      say("The console closed: " + msg.reason);
    } else if (msg.type === "error") {
      say(msg.message);
    }
  });
  ws.addEventListener("close", function (ev) {
    if (!opened) {
      say("The console is unavailable right now (the connection was refused). " +
        "Try again later, or use ssh or rackshare console.");
    } else if (!status.textContent.startsWith("The console closed")) {
      say("The console closed" + (ev.reason ? ": " + ev.reason : "."));
    }
  });
  term.onData(function (data) {
    if (ws.readyState === WebSocket.OPEN) {
      ws.send(encoder.encode(data));
    }
  });
  if (take) {
    take.addEventListener("click", function () { control("take"); });
  }
  if (give) {
    give.addEventListener("click", function () { control("give"); });
  }
})();
