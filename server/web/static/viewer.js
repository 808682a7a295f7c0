// The patch viewer: the image scaled to the viewport, wheel zoom around the pointer, drag to
// pan, the neighbouring sections, brightness/contrast in the browser, a scale bar.
"use strict";

const NICE_NM = [10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000];
const FIT = 0.72; // the patch takes this share of the viewer's shorter side when fitted

class Viewer {
  constructor({ root, image, frame, scalebar, badge }) {
    Object.assign(this, { root, image, frame, scalebar, badge });
    this.patchPx = 140;      // the patch's side in image pixels
    this.marginPx = 0;       // context around it in the image
    this.nmPerPx = null;     // nm per image pixel (voxel size x mag)
    this.scale = 1;          // screen pixels per image pixel
    this.fitScale = 1;
    this.cx = 0; this.cy = 0; // image point at the viewer's centre
    this.filter = { brightness: 100, contrast: 100 };
    this.root.addEventListener("wheel", (e) => this.onWheel(e), { passive: false });
    this.root.addEventListener("pointerdown", (e) => this.onDrag(e));
    new ResizeObserver(() => { const keep = this.scale / this.fitScale; this.measure(); this.scale = this.fitScale * keep; this.draw(); }).observe(this.root);
  }

  // Set the geometry for the next image: patch and margin in image pixels, nm per pixel.
  configure({ patchPx, marginPx, nmPerPx }) {
    Object.assign(this, { patchPx, marginPx, nmPerPx });
  }

  measure() {
    const r = this.root.getBoundingClientRect();
    this.width = r.width; this.height = r.height;
    this.fitScale = Math.max(0.25, (FIT * Math.min(r.width, r.height)) / this.patchPx);
  }

  fit() {
    this.measure();
    this.scale = this.fitScale;
    this.cx = this.cy = this.marginPx + this.patchPx / 2;
    this.draw();
  }

  show(src, { keepView = false } = {}) {
    this.image.src = src;
    if (!keepView) this.fit(); else this.draw();
  }

  clear() { this.image.removeAttribute("src"); this.frame.hidden = true; this.scalebar.hidden = true; }

  zoomBy(factor, at = null) {
    const px = at ? at.x : this.width / 2, py = at ? at.y : this.height / 2;
    // the image point under (px, py) stays where it is
    const ix = this.cx + (px - this.width / 2) / this.scale;
    const iy = this.cy + (py - this.height / 2) / this.scale;
    const next = Math.min(this.fitScale * 8, Math.max(this.fitScale / 4, this.scale * factor));
    this.cx = ix - (px - this.width / 2) / next;
    this.cy = iy - (py - this.height / 2) / next;
    this.scale = next;
    this.draw();
  }

  setFilter(brightness, contrast) {
    this.filter = { brightness, contrast };
    this.image.style.filter = `brightness(${brightness}%) contrast(${contrast}%)`;
  }

  onWheel(e) {
    if (!this.image.getAttribute("src")) return;
    e.preventDefault();
    const r = this.root.getBoundingClientRect();
    this.zoomBy(Math.exp(-e.deltaY * 0.0015), { x: e.clientX - r.left, y: e.clientY - r.top });
  }

  onDrag(e) {
    if (e.button !== 0 || !this.image.getAttribute("src")) return;
    const start = { x: e.clientX, y: e.clientY, cx: this.cx, cy: this.cy };
    this.root.setPointerCapture(e.pointerId);
    this.root.classList.add("dragging");
    const move = (m) => {
      this.cx = start.cx - (m.clientX - start.x) / this.scale;
      this.cy = start.cy - (m.clientY - start.y) / this.scale;
      this.draw();
    };
    const up = () => {
      this.root.removeEventListener("pointermove", move);
      this.root.removeEventListener("pointerup", up);
      this.root.classList.remove("dragging");
    };
    this.root.addEventListener("pointermove", move);
    this.root.addEventListener("pointerup", up);
  }

  draw() {
    if (!this.width) this.measure();
    const s = this.scale;
    const left = this.width / 2 - this.cx * s, top = this.height / 2 - this.cy * s;
    const side = this.patchPx + 2 * this.marginPx;
    Object.assign(this.image.style, { left: `${left}px`, top: `${top}px`, width: `${side * s}px`, height: `${side * s}px` });
    const has = Boolean(this.image.getAttribute("src"));
    this.frame.hidden = !has;
    Object.assign(this.frame.style, {
      left: `${left + this.marginPx * s}px`, top: `${top + this.marginPx * s}px`,
      width: `${this.patchPx * s}px`, height: `${this.patchPx * s}px`,
    });
    this.drawScalebar(has);
  }

  drawScalebar(has) {
    if (!has || !this.nmPerPx) { this.scalebar.hidden = true; return; }
    const pxPerNm = this.scale / this.nmPerPx;
    const nm = NICE_NM.find((n) => n * pxPerNm >= 80) || NICE_NM[NICE_NM.length - 1];
    this.scalebar.hidden = false;
    this.scalebar.querySelector("span").style.width = `${nm * pxPerNm}px`;
    this.scalebar.querySelector("b").textContent = nm >= 1000 ? `${nm / 1000} µm` : `${nm} nm`;
  }

  // How much of the viewer the patch fills, for the zoom read-out.
  zoomText() { return `zoom ${(this.scale / this.fitScale).toFixed(2)}× fit`; }
}
