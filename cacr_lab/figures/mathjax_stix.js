/* MathJax 2 settings for an offline notebook export (cacr_lab.figures.mathjax_url): the MathJax
   of jupyter-server-mathjax ships the STIX-Web fonts only, and HTML-CSS output asks for TeX
   fonts by default, which fails on some formulas ("Math Processing Error"). */
MathJax.Hub.Config({
  "HTML-CSS": {availableFonts: ["STIX"], preferredFont: "STIX", webFont: "STIX-Web", imageFont: null}
});
MathJax.Ajax.loadComplete(document.currentScript.src.split("?")[0]);
