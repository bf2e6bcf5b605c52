// embtab._core: the compiled module. One binding file per component registers itself here.
#include <pybind11/pybind11.h>

namespace py = pybind11;

void bind_io(py::module_& m);
void bind_table(py::module_& m);
void bind_rerank(py::module_& m);
void bind_ops(py::module_& m);
void bind_testing(py::module_& m);
void bind_optim(py::module_& m);

PYBIND11_MODULE(_core, m) {
    m.doc() = "embtab's compiled core (private; use the embtab package)";
    m.attr("__version__") = EMBTAB_VERSION;
#ifdef EMBTAB_SANITIZED
    m.attr("_sanitized") = true;
#else
    m.attr("_sanitized") = false;
#endif
    bind_io(m);
    bind_table(m);
    bind_rerank(m);
    bind_ops(m);
    bind_testing(m);
    bind_optim(m);
}
