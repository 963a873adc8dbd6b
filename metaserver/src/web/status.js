// Keeps an open status page current without reloading it. The server
// renders every part (and escapes every string), so this only swaps in a
// fresh copy of the main element and says when that fails.
(function () {
  'use strict';
  var main = document.getElementById('status');
  var stale = document.getElementById('stale');
  if (!main || !stale || !window.fetch) return;
  var every = parseInt(main.getAttribute('data-refresh-ms'), 10) || 5000;
  var refreshes = 0;

  function refresh() {
    fetch('fragment', { cache: 'no-store' })
      .then(function (response) {
        if (!response.ok) throw new Error('HTTP ' + response.status);
        return response.text();
      })
      .then(function (html) {
        main.innerHTML = html;
        refreshes += 1;
        document.body.setAttribute('data-refreshes', String(refreshes));
        var health = document.getElementById('health');
        if (health) document.title = health.textContent + ' · Tessera';
        stale.hidden = true;
      })
      .catch(function (err) {
        stale.textContent = 'Not updating (' + err.message + '); retrying every ' +
          every / 1000 + ' s.';
        stale.hidden = false;
      })
      .then(function () {
        setTimeout(refresh, every);
      });
  }

  setTimeout(refresh, every);
})();
