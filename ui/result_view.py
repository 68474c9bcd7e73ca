"""How result galleries show pictures: whole, inside their box, and crisp when small.

Gradio's gallery lays one picture per square cell as wide as the column, so a single 64x64 result
is drawn 580 px tall in a 420 px box (its bottom hidden), and small pictures are smoothed. This
script sizes each result picture (`.ldm-gallery img`) to the largest whole multiple of its own
size that fits the cell's width and the box's height (nearest-neighbour, `image-rendering:
pixelated`, so a 64 px picture stays sharp), or scales it down to fit when it is larger than the
box (object-fit: contain). It runs again when a picture loads or the window is resized.
"""

FIT_JS = """
() => {
  const fit = (img) => {
    const cell = img.closest(".thumbnail-item"), wrap = img.closest(".grid-wrap");
    if (!cell || !wrap || !img.naturalWidth) return;
    const width = cell.parentElement.clientWidth / Math.max(1,
      getComputedStyle(cell.parentElement).gridTemplateColumns.split(" ").length) - 8;
    const height = wrap.clientHeight - 32;
    const scale = Math.min(width / img.naturalWidth, height / img.naturalHeight);
    const k = scale >= 1 ? Math.floor(scale) : scale;
    img.style.width = `${Math.floor(img.naturalWidth * k)}px`;
    img.style.height = `${Math.floor(img.naturalHeight * k)}px`;
    img.style.objectFit = "contain";
    img.style.imageRendering = scale >= 1 ? "pixelated" : "auto";
    cell.style.aspectRatio = "auto";
    cell.style.height = `${Math.floor(img.naturalHeight * k) + 4}px`;
  };
  const fitAll = () => document.querySelectorAll(".ldm-gallery img").forEach((img) => {
    if (!img.dataset.ldmFit) { img.dataset.ldmFit = "1"; img.addEventListener("load", () => fit(img)); }
    fit(img);
  });
  let queued = false;
  const later = () => { if (!queued) { queued = true; requestAnimationFrame(() => { queued = false; fitAll(); }); } };
  new MutationObserver(later).observe(document.body, {childList: true, subtree: true, attributes: true,
                                                      attributeFilter: ["src"]});
  window.addEventListener("resize", later);
}
"""
