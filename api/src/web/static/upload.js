// rackshare: the image upload form's progress. Without this script the form posts as usual;
// with it, the same form goes through XMLHttpRequest so its upload events can be shown.
(function () {
  "use strict";
  var form = document.getElementById("upload-form");
  if (!form || !window.XMLHttpRequest || !window.FormData || !window.DOMParser) {
    return;
  }
  var bar = document.getElementById("upload-progress");
  var status = document.getElementById("upload-status");
  var button = document.getElementById("upload");

  function say(text) {
    status.textContent = text;
  }

  // The answer is a whole page: take its message and its list of images.
  function showAnswer(xhr) {
    var doc = new DOMParser().parseFromString(xhr.responseText, "text/html");
    var problem = doc.getElementById("problem") || doc.querySelector(".problem");
    if (xhr.status >= 400 || problem) {
      say(problem ? problem.textContent.trim() : "The upload failed (" + xhr.status + ").");
      return;
    }
    var fresh = doc.getElementById("image-list");
    var list = document.getElementById("image-list");
    if (fresh && list) {
      list.replaceWith(fresh);
    }
    var notice = doc.querySelector(".notice");
    say(notice ? notice.textContent.trim() : "The image was uploaded.");
    form.reset();
  }

  form.addEventListener("submit", function (ev) {
    ev.preventDefault();
    var xhr = new XMLHttpRequest();
    xhr.open("POST", form.action);
    xhr.upload.addEventListener("progress", function (e) {
      bar.hidden = false;
      if (e.lengthComputable && e.total > 0) {
        var pct = Math.floor((e.loaded * 100) / e.total);
        bar.value = pct;
        say("Uploaded " + pct + " %");
      } else {
        say("Uploading…");
      }
    });
    xhr.upload.addEventListener("load", function () {
      bar.value = 100;
      say("Uploaded 100 %; the server is checking the image…");
    });
    xhr.addEventListener("load", function () {
      button.disabled = false;
      showAnswer(xhr);
    });
    xhr.addEventListener("error", function () {
      button.disabled = false;
      say("The upload was interrupted. Try again.");
    });
    button.disabled = true;
    say("Starting the upload…");
    xhr.send(new FormData(form));
  });
})();
