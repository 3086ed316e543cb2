/* Yizhan kiosk: keypads, live hints, the idle timer and the pages that poll.
   Plain JavaScript, no framework; every page works from what the server rendered,
   this only makes it respond to touch. The phone number never leaves the form's
   POST body: nothing here stores it, logs it or puts it in a URL. */
(function () {
  "use strict";

  var body = document.body;
  var lastTouch = Date.now();

  ["pointerdown", "touchstart", "keydown", "click"].forEach(function (type) {
    document.addEventListener(type, function () { lastTouch = Date.now(); },
                              {capture: true, passive: true});
  });

  function idleFor() { return Date.now() - lastTouch; }

  // -- keypads: <div class="keypad" data-target="phone"> <button data-key="7"> ... --------

  function press(input, key) {
    var max = parseInt(input.getAttribute("maxlength") || "64", 10);
    if (key === "back") {
      input.value = input.value.slice(0, -1);
    } else if (key === "clear") {
      input.value = "";
    } else if (input.value.length < max) {
      input.value += key;
    }
    input.dispatchEvent(new Event("input", {bubbles: true}));
  }

  document.querySelectorAll(".keypad").forEach(function (pad) {
    var input = document.getElementById(pad.getAttribute("data-target"));
    if (!input) { return; }
    pad.addEventListener("click", function (event) {
      var key = event.target.closest("button[data-key]");
      if (key) {
        event.preventDefault();
        press(input, key.getAttribute("data-key"));
      }
    });
  });

  // -- live hints under the phone and PIN fields ----------------------------------------

  function phoneHint(value, hint) {
    if (value.length === 0) { return [hint.getAttribute("data-start"), false]; }
    if (value.length >= 2 && !/^1[3-9]/.test(value)) {
      return [hint.getAttribute("data-prefix"), true];
    }
    if (value.length === 1 && value !== "1") { return [hint.getAttribute("data-prefix"), true]; }
    if (value.length < 11) {
      return [hint.getAttribute("data-more").replace("{n}", String(11 - value.length)), false];
    }
    return [hint.getAttribute("data-done"), false];
  }

  function pinHint(value, hint) {
    if (value.length >= 4) { return [hint.getAttribute("data-done"), false]; }
    return [hint.getAttribute("data-start"), false];
  }

  document.querySelectorAll("input[data-check]").forEach(function (input) {
    var hint = document.getElementById(input.getAttribute("aria-describedby"));
    var check = input.getAttribute("data-check") === "phone" ? phoneHint : pinHint;
    if (!hint) { return; }
    input.addEventListener("input", function () {
      var said = check(input.value, hint);
      if (said[0]) { hint.textContent = said[0]; }
      hint.classList.toggle("error", said[1]);
    });
  });

  // One tap is one submit: a second tap while the page loads does nothing.
  document.querySelectorAll("form").forEach(function (form) {
    form.addEventListener("submit", function (event) {
      if (form.getAttribute("data-sent")) { event.preventDefault(); return; }
      form.setAttribute("data-sent", "1");
    });
  });

  // A page shown again from the back-forward cache takes taps again.
  window.addEventListener("pageshow", function () {
    document.querySelectorAll("form[data-sent]").forEach(function (form) {
      form.removeAttribute("data-sent");
    });
  });

  // -- the clock ------------------------------------------------------------------------

  var clock = document.getElementById("clock");
  if (clock) {
    setInterval(function () {
      var now = new Date();
      clock.textContent = ("0" + now.getHours()).slice(-2) + ":" +
                          ("0" + now.getMinutes()).slice(-2);
    }, 10000);
  }

  // -- idle: every page but home goes home after data-idle seconds untouched ----------

  var idle = parseInt(body.getAttribute("data-idle") || "0", 10);
  var idleUrl = body.getAttribute("data-idle-url") || "/reset?idle=1";
  if (idle > 0) {
    setInterval(function () {
      if (idleFor() >= idle * 1000) { location.replace(idleUrl); }
    }, 1000);
  }

  // Home: refresh the numbers now and then (never under a finger), and a screen left
  // in another language goes back to the default one for the next rider.
  var refresh = parseInt(body.getAttribute("data-refresh") || "0", 10);
  var langReset = parseInt(body.getAttribute("data-lang-reset") || "0", 10);
  if (refresh > 0 || langReset > 0) {
    var shown = Date.now();
    setInterval(function () {
      if (langReset > 0 && idleFor() >= langReset * 1000) { location.replace(idleUrl); return; }
      if (refresh > 0 && Date.now() - shown >= refresh * 1000 && idleFor() >= 5000) {
        location.reload();
      }
    }, 1000);
  }

  // -- polling --------------------------------------------------------------------------

  function poll(url, every, onData) {
    var failures = 0;
    function tick() {
      fetch(url, {cache: "no-store", credentials: "same-origin"})
        .then(function (response) { return response.json(); })
        .then(function (data) {
          failures = 0;
          if (onData(data) !== false) { setTimeout(tick, every); }
        })
        .catch(function () {
          failures += 1;  // the agent restarting: keep trying, a little slower
          setTimeout(tick, Math.min(5000, every * (1 + failures)));
        });
    }
    setTimeout(tick, every);
  }

  // The borrow progress page: follow the attempt until the board has spoken.
  var status = document.getElementById("status");
  if (status && status.getAttribute("data-poll")) {
    var meter = document.getElementById("meter");
    var left = parseInt(status.getAttribute("data-left") || "0", 10);
    var total = parseInt(status.getAttribute("data-total") || "0", 10);
    var since = Date.now();
    var drawMeter = function () {
      if (!meter || total <= 0) { return; }
      var now = Math.max(0, left - (Date.now() - since));
      meter.style.width = (100 * now / total).toFixed(1) + "%";
    };
    drawMeter();
    setInterval(drawMeter, 250);
    poll(status.getAttribute("data-poll"), 400, function (data) {
      if (data.state && data.state !== status.getAttribute("data-state")) {
        location.reload();  // the server renders the next state, in the right words
        return false;
      }
      if (data.open_ms_left !== null && data.open_ms_left !== undefined) {
        left = data.open_ms_left;
        total = data.open_ms_total || total;
        since = Date.now();
      }
      return true;
    });
  }

  // The return page: the thank-you comes once the station has the bank.
  var waiting = document.getElementById("return-wait");
  if (waiting && waiting.getAttribute("data-poll")) {
    poll(waiting.getAttribute("data-poll"), 1000, function (data) {
      if (data.returned && data.thanks) {
        location.replace(data.thanks);
        return false;
      }
      return true;
    });
  }

  // The staff panel: redraw when a bank or lock moves; leave when the agent ended it.
  var staffPoll = body.getAttribute("data-staff-poll");
  if (staffPoll) {
    poll(staffPoll, 3000, function (data) {
      if (data.active === false) {
        location.replace(body.getAttribute("data-panel"));
        return false;
      }
      if (data.mark && data.mark !== body.getAttribute("data-mark") && idleFor() >= 2000) {
        location.reload();  // not under a finger that is about to tap
        return false;
      }
      return true;
    });
  }
}());
