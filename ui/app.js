// Placeholder UI for the Airlock tray. Buildless ES module: no bundler, no
// external resources. Only textContent is used for dynamic text.

const tauri = window.__TAURI__;

function setText(id, text) {
  const el = document.getElementById(id);
  if (el) {
    el.textContent = text;
  }
}

async function describeRuntime() {
  if (!tauri) {
    setText("runtime", "Running in a browser, not in the Airlock tray app.");
    const note = document.getElementById("browser-note");
    if (note) {
      note.hidden = false;
    }
    return;
  }
  try {
    const [name, version] = await Promise.all([tauri.app.getName(), tauri.app.getVersion()]);
    setText("runtime", `${name} ${version}. The full UI arrives with the control API.`);
  } catch (err) {
    setText("runtime", `Tray app (version unavailable: ${String(err)}).`);
  }
}

describeRuntime();
